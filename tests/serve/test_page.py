"""The web page in a real browser: Debian's chromium, headless, driven by Playwright, with a fake microphone
that plays a spoken question. Typed and spoken turns, a quick click, stop, barge-in, two messages typed during
a reply, and a busy server."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
import soundfile as sf

from glm4voice.chat import VoiceChat
from glm4voice.lm.generate import SamplingConfig
from glm4voice.serve import ChatServer
from tests.conftest import espeak
from tests.serve.conftest import live_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make system-deps installs it)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    playwright = pytest.importorskip("playwright.sync_api")
    wav = tmp_path_factory.mktemp("mic") / "question.wav"
    sf.write(wav, espeak("what is the capital of France"), 16000, subtype="PCM_16")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required"])  # fmt: skip
        yield b
        b.close()


def server_with(template, max_new_tokens: int, **kw) -> ChatServer:
    sampling = SamplingConfig(temperature=0, stop_ids=(), max_new_tokens=max_new_tokens)
    chat = VoiceChat(template.speech_tokenizer, template.lm, template.decoder, template.text_tokenizer,
                     sampling=sampling, stream_options={"n_steps": 1})  # fmt: skip
    return ChatServer(chat, **kw)


def open_page(browser, port: int):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('ready')", timeout=20000)
    return page, errors


def metas(page) -> list[str]:
    return page.eval_on_selector_all(".meta", "els => els.map(e => e.textContent)")


def wait_metas(page, n: int, timeout: int = 60000) -> list[str]:
    page.wait_for_function(f"document.querySelectorAll('.meta').length >= {n}", timeout=timeout)
    return metas(page)


def texts(page, cls: str) -> list[str]:
    return page.eval_on_selector_all(f".{cls}", "els => els.map(e => e.textContent)")


def test_typed_and_spoken_turns_and_a_quick_click(browser, template, tmp_path):
    server = server_with(template, 30)
    with live_server(server) as port:
        page, errors = open_page(browser, port)
        page.fill("#text", "hello there")
        page.press("#text", "Enter")
        assert "speech" in wait_metas(page, 1)[0]  # the reply's speech arrived and played
        assert texts(page, "user") == ["you: hello there"] and texts(page, "assistant")[0]
        # a quick click: the microphone is still opening when the button is released: nothing is sent
        page.dispatch_event("#talk", "pointerdown")
        page.dispatch_event("#talk", "pointerup")
        page.wait_for_timeout(1500)
        assert not texts(page, "error") and page.inner_text("#status").startswith("ready")
        # a spoken turn: hold the button for 2.5 s while the fake microphone plays the question
        page.dispatch_event("#talk", "pointerdown")
        page.wait_for_timeout(2500)
        assert page.is_visible("#meter") and "listening" in page.inner_text("#status")
        page.dispatch_event("#talk", "pointerup")
        wait_metas(page, 2)
        spoken = texts(page, "user")[-1]
        assert spoken.startswith("you (spoken,") and not texts(page, "error"), texts(page, "error")
        # a quick click once the microphone is open: a too-short turn is dropped, not sent empty
        page.dispatch_event("#talk", "pointerdown")
        page.dispatch_event("#talk", "pointerup")
        page.wait_for_timeout(1000)
        assert not texts(page, "error") and page.inner_text("#status").startswith("ready") and len(metas(page)) == 2
        # the space bar works after typing: focus left the text box
        assert page.evaluate("document.activeElement.id") != "text"
        page.screenshot(path=str(tmp_path / "page.png"))
        assert not errors, errors
        page.close()
    server.close()


def test_stop_barge_in_and_two_messages_typed_during_a_reply(browser, template):
    server = server_with(template, 3000)
    with live_server(server) as port:
        page, errors = open_page(browser, port)
        page.fill("#text", "tell me a long story")
        page.press("#text", "Enter")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('replying')")
        page.click("#stop")
        assert "interrupted" in wait_metas(page, 1)[0]
        # barge-in: holding the button during a reply stops it, then the speech is the next turn
        page.fill("#text", "another long one")
        page.press("#text", "Enter")
        page.wait_for_function("document.querySelectorAll('.assistant').length >= 2")
        page.dispatch_event("#talk", "pointerdown")
        page.wait_for_timeout(2000)
        page.dispatch_event("#talk", "pointerup")
        spoken = "[...document.querySelectorAll('.user')].some(e => e.textContent.startsWith('you (spoken'))"
        page.wait_for_function(spoken, timeout=30000)
        page.click("#stop")
        # two messages typed during a reply: both are sent, in order
        page.fill("#text", "first question")
        page.press("#text", "Enter")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('replying')")
        page.fill("#text", "second question")
        page.press("#text", "Enter")
        page.fill("#text", "third question")
        page.press("#text", "Enter")
        page.wait_for_function("document.querySelectorAll('.user').length >= 6", timeout=60000)
        users = texts(page, "user")
        assert users[-2:] == ["you: second question", "you: third question"], users
        page.click("#stop")
        assert not texts(page, "error"), texts(page, "error")
        assert not errors, errors
        page.close()
    server.close()


def test_a_busy_server_says_so_and_answers_in_turn(browser, template):
    from websockets.sync.client import connect as ws_connect

    server = server_with(template, 3000, max_active=1)
    with live_server(server) as port:
        with ws_connect(f"ws://127.0.0.1:{port}/v1/chat") as other:  # someone else holds the only place
            json.loads(other.recv(timeout=10))
            other.send(json.dumps({"type": "text", "text": "a long answer please"}))
            assert json.loads(other.recv(timeout=10))["type"] == "user"
            page, errors = open_page(browser, port)
            page.fill("#text", "me too")
            page.press("#text", "Enter")
            page.wait_for_function("document.getElementById('status').textContent.includes('number 1 in line')")
            other.send(json.dumps({"type": "stop"}))
            done = threading.Event()

            def drain():
                while not done.is_set():
                    frame = other.recv(timeout=30)
                    if isinstance(frame, str) and json.loads(frame)["type"] == "done":
                        done.set()

            drain()
            page.wait_for_function("document.getElementById('status').textContent.startsWith('replying')",
                                   timeout=30000)  # fmt: skip
            page.click("#stop")
            wait_metas(page, 1)
            assert not texts(page, "error") and not errors
            page.close()
    server.close()
