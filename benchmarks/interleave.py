"""Interleaved-data throughput: ids/s of `data interleave` with 1 and 2 actors, and of the t2t model alone,
batched vs one text at a time.

    .venv/bin/python benchmarks/interleave.py [--t2t DIR] [--docs 200] [--actors 1,2]

Without --t2t a random text-to-token model of the tiny recipe's size is made (the work per unit is the real
one; the units are noise). The corpus is Debian fortunes (`data text-corpus`). Prints the CPU model and
flags, then one JSON line per measurement: wall seconds, ids/s (all ids written), codes/s (speech codes
generated), and for the actor runs the speed-up over one actor (linear would be the actor count).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_info  # noqa: E402


def random_t2t(folder: Path) -> Path:
    """A tiny-recipe-sized random t2t model: 4 layers of 256, 1024 audio ids."""
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    from glm4voice.lm.checkpoint import write_glm_folder
    from glm4voice.lm.text import TextTokenizer
    from glm4voice.lm.tiny import write_tiny_tokenizer

    write_tiny_tokenizer(folder / "tok", n_audio=1024)
    tok = TextTokenizer.from_pretrained(folder / "tok")
    torch.manual_seed(0)
    config = GlmConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=64, vocab_size=-(-tok.vocab_size // 16) * 16,
                       pad_token_id=tok.token_id("<|endoftext|>"), max_position_embeddings=4096)  # fmt: skip
    model = GlmForCausalLM(config)
    (folder / "t2t").mkdir()
    write_glm_folder(model.state_dict().items(), config, torch.float32, folder / "t2t", tokenizer_from=folder / "tok")
    return folder / "t2t"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t2t", help="a trained t2t folder (default: a random tiny-sized one)")
    parser.add_argument("--docs", type=int, default=200, help="fortunes documents")
    parser.add_argument("--actors", default="1,2")
    args = parser.parse_args()
    print(f"cpu: {cpu_info()}")
    from glm4voice.data.interleave import InterleaveOptions, interleave, read_documents
    from glm4voice.data.text_corpus import write_text_corpus
    from glm4voice.lm.t2t import T2TConfig, TextToToken

    work = Path(tempfile.mkdtemp())
    try:
        t2t = Path(args.t2t) if args.t2t else random_t2t(work)
        write_text_corpus(work / "all.jsonl")
        rows = (work / "all.jsonl").read_text().splitlines()
        short = [r for r in rows if len(json.loads(r)["text"]) < 300][: args.docs]
        (work / "corpus.jsonl").write_text("\n".join(short) + "\n")
        # the t2t model alone: the spans of the first documents, batched and one by one
        model = TextToToken.from_pretrained(t2t)
        texts = [d["text"][:60] for d in read_documents([work / "corpus.jsonl"])[:16]]
        for name, groups in (("t2t batched (16)", [texts]), ("t2t one by one", [[t] for t in texts])):
            start = time.perf_counter()
            units = sum(len(u) for g in groups for u in model.generate(g, T2TConfig(seed=0)))
            seconds = time.perf_counter() - start
            print(json.dumps({"run": name, "seconds": round(seconds, 2), "codes_per_s": round(units / seconds, 1)}))
        base = None
        for actors in (int(a) for a in args.actors.split(",")):
            out = work / f"out{actors}"
            report = interleave(t2t, [work / "corpus.jsonl"], out, InterleaveOptions(docs_per_shard=8),
                                actors=actors, progress=False)  # fmt: skip
            rate = report["ids_per_second"]
            base = base or rate
            print(json.dumps({"run": f"interleave, {actors} actor(s)", "documents": report["documents"],
                              "seconds": report["seconds"], "ids_per_s": rate, "speedup": round(rate / base, 2),
                              "achieved_eta": report["achieved_eta"]}), flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
