"""Many-voice synthetic speech: a text manifest -> a speech corpus (flac + manifest), with Debian's synthesisers.

    glm4voice data speak --texts texts.jsonl --out corpus/ [--voices flite:slt,espeak-ng:cmn-latn-pinyin] [--seed 0]
                         [--workers 2] [--augment tempo,pitch,noise,reverb]

No speech corpus can be downloaded where this project is built and tested, so the trainers learn from speech made
here: three engines (espeak-ng, flite, festival), their voices, and per-utterance variation so that a speech
tokenizer or decoder meets more than a handful of identical voices.

- A voice is `engine:name` (`espeak-ng:en-us+f3`, `flite:slt`, `festival:kal_diphone`). Each row gets a voice
  (its own `voice` column, or one drawn from `--voices` among those speaking its `lang`), a speaking rate and a
  pitch shift drawn from seeded ranges; all three are recorded in the row. Rate and pitch use the engine's own
  controls; voices whose engine cannot shift their pitch (flite's rms and diphone kal voices, festival's HTS voice)
  get sox's `pitch` instead.
- Augmentation (optional, each kind applied with `--augment-prob`): sox tempo, pitch and reverb, and white noise
  at a drawn SNR from a seeded numpy generator (never sox's own random numbers). What was applied is recorded in
  the row's `augment` column.
- Deterministic: every draw comes from a generator seeded by (seed, sha256(id)), the engines and sox are
  deterministic, and the flac is written by libsndfile with no dither and no timestamps, so the same seed gives
  byte-identical audio and manifest, whatever the number of workers or the order rows finish in.
- `speak_one(row, out, settings)` is a pure function of the text row and the settings: the process pool here
  maps it over the rows, and a Ray Data pipeline can do the same (`ds.map(partial(speak_one, out=..,
  settings=..))`) on a shared file system.
- Resumable: each utterance's flac is written atomically, a re-run skips utterances whose flac exists, and the
  manifest is rebuilt from the rows, so a run killed at any point and run again ends with the same manifest as an
  uninterrupted run. `OUT/speak.json` records the settings and the texts' hash: a re-run with other ones is refused.
- A text an engine cannot speak (it crashes, times out or makes silence) becomes a row of `OUT/errors.jsonl`
  with an `error` column; the rest of the corpus is still made.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_text
from ..errors import Glm4VoiceError
from .manifest import Utterance, iter_manifest, write_manifest

DEFAULT_VOICES = (
    "espeak-ng:en-us", "espeak-ng:en-gb+f3", "espeak-ng:en-gb-scotland+m3", "espeak-ng:en-029+f2",
    "espeak-ng:cmn-latn-pinyin", "espeak-ng:cmn-latn-pinyin+f4",
    "flite:slt", "flite:rms", "flite:awb", "flite:kal16",
    "festival:cmu_us_slt_arctic_hts", "festival:kal_diphone",
)  # fmt: skip
AUGMENTS = ("tempo", "pitch", "noise", "reverb")
INSTALL = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival festvox-us-slt-hts festvox-kallpc16k"}
ESPEAK_RATE = 175  # espeak-ng's default words per minute
ESPEAK_PITCH_PER_SEMITONE = 6  # measured: -p 50 -> 65 raises the median f0 by about 2.5 semitones
FLITE_F0_SHIFT = ("slt", "awb")  # flite's f0_shift moves these (clustergen) voices; kal, kal16 and rms need sox
# festival's default Lisp heap (10M cells, 330 MB) costs 0.2 s of page faults per run, and those faults do not
# scale across processes here; 1M cells holds a long story's utterance and gives the same bytes.
FESTIVAL_HEAP = 1_000_000
MIN_PEAK = 0.02  # engines asked for what they cannot say make silence (flite's peaks at 0.005)


class SpeakError(Glm4VoiceError, ValueError):
    """Bad input to `data speak`: a voice, a setting, the texts or the output folder."""


class EngineFailed(Exception):
    """One utterance an engine could not speak: becomes an error row, never stops the run."""


@dataclass(frozen=True)
class Voice:
    """An installed voice. `native_pitch`: the engine can shift its pitch (otherwise sox does it)."""

    engine: str
    name: str
    lang: str
    native_pitch: bool = True
    hts: bool = False

    @property
    def spec(self) -> str:
        return f"{self.engine}:{self.name}"


def _lang(language: str) -> str:
    language = language.lower()
    if language.startswith("en") or language == "english":
        return "en"
    if language.split("-")[0] in ("cmn", "zh", "mandarin", "chinese"):
        return "zh"
    return language


def _query(cmd: list[str], stdin: str | None = None) -> str:
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SpeakError(f"cannot list the voices of {cmd[0]} ({exc})") from None


_FESTIVAL_QUERY = """(mapcar (lambda (v) (voice.select v)
  (print (list v (cadr (assoc 'language (cadr (voice.description v)))) (Parameter.get 'Synth_Method)
    (if (and (eq? (Parameter.get 'Int_Target_Method) Int_Targets_LR) (symbol-bound? 'int_lr_params)
             (assoc 'target_f0_mean int_lr_params)) 'lr 'none)))) (voice.list))"""


@functools.cache
def engine_voices(engine: str) -> dict[str, Voice]:
    """The voices an installed engine offers; SpeakError naming the Debian package(s) when it is missing."""
    if engine not in INSTALL:
        raise SpeakError(f"unknown engine {engine!r}: use espeak-ng, flite or festival")
    if shutil.which(engine) is None:
        raise SpeakError(f"{engine} is not installed: apt-get install {INSTALL[engine]} (or run make)")
    voices = {}
    if engine == "espeak-ng":
        for line in _query(["espeak-ng", "--voices"]).splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 5 and not cols[4].startswith("mb/"):  # mbrola voices need the mbrola packages
                voices[cols[1]] = Voice(engine, cols[1], _lang(cols[1]))
        for line in _query(["espeak-ng", "--voices=variant"]).splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 5:
                voices["+" + cols[4].removeprefix("!v/")] = Voice(engine, "+" + cols[4].removeprefix("!v/"), "")
    elif engine == "flite":
        names = _query(["flite", "-lv"]).split(":", 1)[-1].split()
        for name in names:
            if name != "awb_time":  # a limited-domain voice that only says the time
                voices[name] = Voice(engine, name, "en", native_pitch=name in FLITE_F0_SHIFT)
    else:
        for line in _query(["festival", "--heap", str(FESTIVAL_HEAP), "--pipe"], _FESTIVAL_QUERY).splitlines():
            match = re.fullmatch(r"\((\S+) (\S+) (\S+) (\S+)\)", line.strip())
            if match:
                name, language, method, f0 = match.groups()
                voices[name] = Voice(engine, name, _lang(language), native_pitch=f0 == "lr" and method != "HTS",
                                     hts=method == "HTS")
    return voices


@functools.cache
def _reads_hanzi(voice: str) -> bool:
    """Whether an espeak-ng Mandarin voice says Chinese characters in Mandarin. Debian's espeak-ng 1.51 `cmn`
    turns each character into pinyin and then reads that as English ('好' -> 'hao3' -> "how three"), marking the
    switch `(en)` in its phonemes; `cmn-latn-pinyin` speaks the same pinyin in Mandarin with its tones."""
    return "(en)" not in _query(["espeak-ng", "-q", "-x", "-v", voice, "你好"])


def parse_voice(spec: str) -> Voice:
    """`engine:name` -> the installed Voice; SpeakError for a missing engine or an unknown voice."""
    engine, sep, name = spec.strip().partition(":")
    if not sep or not name:
        raise SpeakError(f"voice {spec!r}: write it engine:name (espeak-ng:en-us, flite:slt, festival:kal_diphone)")
    voices = engine_voices(engine)
    if engine == "espeak-ng":
        base, plus, variant = name.partition("+")
        if base in voices and (not plus or "+" + variant in voices):
            if voices[base].lang == "zh" and not _reads_hanzi(base):
                raise SpeakError(f"voice {spec!r}: this espeak-ng reads Chinese characters as English words with "
                                 "tone numbers ('好' sounds like 'how three'; espeak-ng issue #1236): use "
                                 "espeak-ng:cmn-latn-pinyin")  # fmt: skip
            return Voice(engine, name, voices[base].lang)
    elif name in voices:
        return voices[name]
    known = sorted(v for v in voices if not v.startswith("+"))
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    hint = " (variants: +f1..+f5, +m1..+m7, ...)" if engine == "espeak-ng" else ""
    raise SpeakError(f"unknown voice {spec!r}: {engine} has {shown}{hint}")


def _span(value, name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not lo <= hi:
        raise SpeakError(f"{name}: the range {lo}:{hi} is empty")
    return lo, hi


@dataclass(frozen=True)
class SpeakSettings:
    """Everything that decides the audio besides the text row: two runs with equal settings make equal bytes.

    rate: speaking-rate factor (1 = the voice's default, 1.2 = 20% faster); pitch and shift: semitones;
    snr: dB of speech over the added white noise; reverb: sox reverberance in percent.
    """

    voices: tuple[str, ...] = DEFAULT_VOICES
    seed: int = 0
    rate: tuple[float, float] = (0.85, 1.15)
    pitch: tuple[float, float] = (-2.0, 2.0)
    augment: tuple[str, ...] = ()
    augment_prob: float = 0.5
    tempo: tuple[float, float] = (0.9, 1.1)
    shift: tuple[float, float] = (-2.0, 2.0)
    snr: tuple[float, float] = (10.0, 30.0)
    reverb: tuple[float, float] = (10.0, 60.0)
    timeout: float = 120.0

    def checked(self) -> SpeakSettings:
        """The settings with ranges as float pairs; SpeakError on a bad one."""
        if not self.voices:
            raise SpeakError("give at least one voice")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise SpeakError(f"seed must be an integer >= 0, not {self.seed!r}")
        unknown = [a for a in self.augment if a not in AUGMENTS]
        if unknown:
            raise SpeakError(f"unknown augmentation {unknown[0]!r}: choose from {', '.join(AUGMENTS)}")
        if not 0 <= self.augment_prob <= 1:
            raise SpeakError(f"augment probability must be in [0, 1], not {self.augment_prob}")
        spans = {f.name: _span(getattr(self, f.name), f.name) for f in fields(self) if f.name in
                 ("rate", "pitch", "tempo", "shift", "snr", "reverb")}  # fmt: skip
        if spans["rate"][0] <= 0 or spans["tempo"][0] <= 0:
            raise SpeakError("rate and tempo factors must be > 0")
        if not 0 <= spans["reverb"][0] <= spans["reverb"][1] <= 100:
            raise SpeakError("reverb is a percentage in [0, 100]")
        voices = tuple(parse_voice(v).spec for v in self.voices)
        return SpeakSettings(**{**asdict(self), **spans, "voices": voices, "augment": tuple(self.augment)})


def _rng(seed: int, key: str, stream: int) -> np.random.Generator:
    """A generator that depends only on (seed, id, stream): no order, worker or process dependence."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return np.random.default_rng([seed, stream, *np.frombuffer(digest[:16], dtype="<u4").tolist()])


def plan(row: dict, settings: SpeakSettings) -> dict:
    """Voice, rate, pitch and augmentation for one text row: a pure function of the row and the settings.

    Every draw is made whether it is used or not, so turning augmentation on or off keeps the voices and rates.
    """
    rng = _rng(settings.seed, row["id"], 0)
    pick, rate, pitch = rng.random(), rng.uniform(*settings.rate), rng.uniform(*settings.pitch)
    draws = {kind: (rng.random() < settings.augment_prob, rng.uniform(*getattr(settings, key)))
             for kind, key in zip(AUGMENTS, ("tempo", "shift", "snr", "reverb"))}  # fmt: skip
    voice = row.get("voice")
    if voice is None:
        lang = row.get("lang", "")
        candidates = [v for v in settings.voices if not lang or parse_voice(v).lang == lang]
        voice = candidates[int(pick * len(candidates))] if candidates else None
    augment = {}
    digits = {"tempo": 3, "pitch": 2, "noise": 1, "reverb": 0}
    for kind in AUGMENTS:
        use, value = draws[kind]
        if kind in settings.augment and use:
            value = round(float(value), digits[kind])
            augment["snr" if kind == "noise" else kind] = int(value) if kind == "reverb" else value
    return {"voice": voice, "rate": float(row.get("rate", round(rate, 3))),
            "pitch": float(row.get("pitch", round(pitch, 2))), "augment": augment}  # fmt: skip


def _run(cmd: list[str], what: str, timeout: float, stdin: bytes | None = None) -> None:
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EngineFailed(f"{what} took more than {timeout:g} s") from None
    except OSError as exc:
        raise EngineFailed(f"{what} could not start ({exc})") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        if done.returncode < 0:
            raise EngineFailed(f"{what} crashed on this text (signal {-done.returncode})")
        raise EngineFailed(f"{what} failed (exit status {done.returncode}{': ' + message[-1] if message else ''})")


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def synthesize(voice: Voice, text: str, rate: float, pitch: float, work: Path, timeout: float = 120.0):
    """Speak `text` with the engine's own rate and (where it has one) pitch control -> (float32 audio, rate)."""
    import soundfile as sf

    wav, txt = work / "speech.wav", work / "text.txt"
    text = " ".join(text.split())
    txt.write_text(text + "\n", encoding="utf-8")
    factor = 2 ** (pitch / 12)
    if voice.engine == "espeak-ng":
        p = min(99, max(0, round(50 + ESPEAK_PITCH_PER_SEMITONE * pitch)))
        cmd = ["espeak-ng", "-v", voice.name, "-s", str(round(ESPEAK_RATE * rate)), "-p", str(p), "-w", str(wav),
               "-f", str(txt)]  # fmt: skip
    elif voice.engine == "flite":
        cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={1 / rate:.4f}"]
        if voice.native_pitch:
            cmd += ["--setf", f"f0_shift={factor:.4f}"]
        cmd += ["-f", str(txt), "-o", str(wav)]
    else:
        scheme = [f"(voice.select '{voice.name})"]
        if voice.hts:  # the HTS engine makes its own durations: its speed option, not Duration_Stretch
            scheme.append(f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {rate:.4f}))))')
        else:
            scheme.append(f"(Parameter.set 'Duration_Stretch {1 / rate:.4f})")
        if voice.native_pitch:
            scheme.append(f"(set! int_lr_params (cons (list 'target_f0_mean (* {factor:.4f} (cadr (assoc "
                          "'target_f0_mean int_lr_params)))) int_lr_params))")  # fmt: skip
        scheme.append(f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(text)})) {_scheme_string(str(wav))} "
                      "'riff)")  # fmt: skip
        script = work / "speak.scm"
        script.write_text("\n".join(scheme) + "\n", encoding="utf-8")
        cmd = ["festival", "--heap", str(FESTIVAL_HEAP), "--batch", str(script)]
    _run(cmd, voice.spec, timeout)
    try:
        audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError) as exc:
        raise EngineFailed(f"{voice.spec} wrote no readable audio ({exc})") from None
    audio = audio.mean(axis=1, dtype=np.float32)
    if len(audio) < 0.1 * sr or np.abs(audio).max() < MIN_PEAK:
        raise EngineFailed(f"{voice.spec} made no speech for this text")
    return audio, sr


def _sox(audio: np.ndarray, sr: int, effects: list[str], timeout: float) -> np.ndarray:
    """Run sox effects on float32 samples (raw in, raw out: no headers, no dither, repeatable)."""
    raw = ["-t", "raw", "-e", "floating-point", "-b", "32", "-r", str(sr), "-c", "1"]
    cmd = ["sox", "-D", "-R", "-V1", *raw, "-", *raw, "-", *effects]
    try:
        done = subprocess.run(cmd, input=audio.astype(np.float32).tobytes(), capture_output=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineFailed(f"sox {' '.join(effects)} failed ({exc})") from None
    if done.returncode != 0:
        raise EngineFailed(f"sox {' '.join(effects)} failed: {done.stderr.decode(errors='replace').strip()}")
    return np.frombuffer(done.stdout, dtype=np.float32).copy()


def render(voice: Voice, text: str, choice: dict, key: str, settings: SpeakSettings, work: Path):
    """The final audio of one utterance: synthesis, sox effects, seeded noise -> (int16 samples, rate)."""
    audio, sr = synthesize(voice, text, choice["rate"], choice["pitch"], work, settings.timeout)
    aug = choice["augment"]
    cents = (0 if voice.native_pitch else choice["pitch"]) + aug.get("pitch", 0)
    effects = ["pitch", f"{100 * cents:.0f}"] if round(100 * cents) else []
    if "tempo" in aug:
        effects += ["tempo", "-s", f"{aug['tempo']:.3f}"]
    if "reverb" in aug:
        effects += ["reverb", f"{aug['reverb']:.0f}"]
    if effects:
        audio = _sox(audio, sr, effects, settings.timeout)
    if "snr" in aug:
        power = float(np.mean(audio.astype(np.float64) ** 2))
        noise = _rng(settings.seed, key, 1).standard_normal(len(audio)) * np.sqrt(power / 10 ** (aug["snr"] / 10))
        audio = audio + noise.astype(np.float32)
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak > 1:
        audio = audio * (0.99 / peak)
    return np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16), sr


def audio_name(key: str) -> str:
    """The flac's path inside OUT: the id made file-safe, plus a hash when that changed it (no two ids collide)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", key).lstrip(".")[:100] or "_"
    if safe != key:
        safe += "-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:10]
    return f"audio/{safe}.flac"


def speak_one(row: dict, out: str | os.PathLike, settings: SpeakSettings) -> dict:
    """Speak one text row into OUT (skipped when its flac exists) -> its manifest row, or an `error` row.

    Pure in the row and the settings; the flac appears atomically, so it is either whole or absent.
    """
    import soundfile as sf

    out = Path(out)
    choice = plan(row, settings)
    failed = {"id": row["id"], "text": row["text"], "voice": choice["voice"]}
    if choice["voice"] is None:
        return {**failed, "error": f"no voice in --voices speaks {row.get('lang')!r}"}
    voice = parse_voice(choice["voice"])
    if row.get("lang") and voice.lang != row["lang"]:
        return {**failed, "error": f"{voice.spec} speaks {voice.lang!r}, the row is {row['lang']!r}"}
    name = audio_name(row["id"])
    final = out / name
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=final.parent, prefix=".work-", suffix=".tmp"))
        try:
            samples, sr = render(voice, row["text"], choice, row["id"], settings, work)
        except EngineFailed as exc:
            return {**failed, "error": str(exc)}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        with atomic_path(final) as tmp:
            sf.write(tmp, samples, sr, format="FLAC", subtype="PCM_16")
    info = sf.info(final)
    extra = {k: v for k, v in row.items() if k not in ("id", "audio", "text", "lang", "speaker", "seconds")}
    extra.update(voice=voice.spec, rate=choice["rate"], pitch=choice["pitch"])
    if choice["augment"]:
        extra["augment"] = choice["augment"]
    return Utterance(row["id"], name, row["text"], row.get("lang") or voice.lang, voice.spec,
                     round(info.frames / info.samplerate, 6), extra).to_json()  # fmt: skip


def _read_texts(texts: str | os.PathLike) -> list[dict]:
    rows = []
    for where, row in iter_manifest(texts, need=("text",)):
        voice, rate, pitch = (row.extra.get(k) for k in ("voice", "rate", "pitch"))
        if voice is not None:
            if not isinstance(voice, str):
                raise SpeakError(f"{where}: voice must be a string like flite:slt")
            try:
                parse_voice(voice)
            except SpeakError as exc:
                raise SpeakError(f"{where}: {exc}") from None
        for key, value in (("rate", rate), ("pitch", pitch)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise SpeakError(f"{where}: {key} must be a number")
        if rate is not None and rate <= 0:
            raise SpeakError(f"{where}: rate must be > 0")
        rows.append(row.to_json())
    return rows


def _prepare(out: Path, stamp: dict) -> None:
    """Create OUT (or check that it holds a run of these settings) and clear temporary files a killed run left."""
    record = out / "speak.json"
    try:
        (out / "audio").mkdir(parents=True, exist_ok=True)
        if record.exists():
            if json.loads(record.read_text(encoding="utf-8")) != json.loads(json.dumps(stamp)):
                raise SpeakError(f"{out} holds a run with other texts or settings (see {record}): pick a new --out")
        else:
            write_text(record, json.dumps(stamp, indent=1) + "\n")
        for leftover in (out / "audio").glob(".*.tmp"):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    except OSError as exc:
        raise SpeakError(f"{out}: cannot write the corpus there ({exc.strerror or exc})") from None
    except json.JSONDecodeError:
        raise SpeakError(f"{record} is not a speak record: pick a new --out") from None


def speak(texts: str | os.PathLike, out: str | os.PathLike, settings: SpeakSettings | None = None, *,
          workers: int = 1, progress: bool = True) -> dict:  # fmt: skip
    """Speak every row of `texts` into OUT: flac files, `manifest.jsonl`, `errors.jsonl`; returns a summary."""
    from tqdm import tqdm

    if workers < 1:
        raise SpeakError("workers must be >= 1")
    start = time.perf_counter()
    settings = (settings or SpeakSettings()).checked()
    rows = _read_texts(texts)
    out = Path(out)
    digest = hashlib.sha256(Path(texts).read_bytes()).hexdigest()
    _prepare(out, {"texts_sha256": digest, "settings": asdict(settings)})
    done_before = sum((out / audio_name(r["id"])).exists() for r in rows)
    results: list[dict | None] = [None] * len(rows)
    bar = tqdm(total=len(rows), disable=not progress, unit="utt", desc="speak", dynamic_ncols=True)
    try:
        if workers == 1:
            for i, row in enumerate(rows):
                results[i] = speak_one(row, out, settings)
                bar.update()
        else:
            import multiprocessing

            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            try:
                futures = {pool.submit(speak_one, row, str(out), settings): i for i, row in enumerate(rows)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
            finally:  # on Ctrl-C or an error, drop the queued rows instead of speaking them all first
                pool.shutdown(cancel_futures=True)
    except BrokenProcessPool:
        raise SpeakError("a worker process died (out of memory?): what is finished is kept, "
                         "run again to resume") from None  # fmt: skip
    except OSError as exc:
        raise SpeakError(f"{out}: cannot write the corpus there ({exc.strerror or exc}); "
                         "what is finished is kept, run again to resume") from None  # fmt: skip
    finally:
        bar.close()
    spoken = [r for r in results if "error" not in r]
    failed = [r for r in results if "error" in r]
    corpus = [Utterance.from_json({**r, "audio": str(out / r["audio"])}, r["id"]) for r in spoken]
    write_manifest(out / "manifest.jsonl", corpus)
    if failed:
        write_manifest(out / "errors.jsonl", [Utterance.from_json(r, r["id"], need=()) for r in failed])
    else:
        (out / "errors.jsonl").unlink(missing_ok=True)
    return {"rows": len(rows), "spoken": len(spoken), "failed": len(failed), "resumed": done_before,
            "audio_seconds": round(sum(r["seconds"] for r in spoken), 2),
            "wall_seconds": round(time.perf_counter() - start, 2),
            "failures": [(r["id"], r["error"]) for r in failed[:20]]}  # fmt: skip
