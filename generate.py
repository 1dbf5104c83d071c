"""Complete prompts with a trained model: a run's output_dir or one of its checkpoint-N folders.

    python generate.py runs/demo "The for statement"
    python generate.py runs/demo/checkpoint-200 "The for statement" "A class definition" --max_new_tokens 32
    python generate.py runs/demo "The for statement" --greedy

Samples by default (temperature 0.8, top-k 50, top-p 0.95, seeded, so a rerun prints the same text);
`--greedy` takes the most likely token at each step instead, as the samples written during training do.
Each completion is printed as the prompt followed by the generated text. Only the local folder is read
(the model code saved next to the weights, hence trust_remote_code), never the Hub.
"""

import argparse
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from pretraining.devices import default_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Complete prompts with a trained SmolLM2 run or checkpoint.")
    parser.add_argument("path", help="A run's output_dir or one of its checkpoint-N folders.")
    parser.add_argument("prompts", nargs="+", metavar="prompt", help="Text to complete (one completion each).")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="Tokens to generate per prompt.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--do_sample", dest="do_sample", action="store_true", default=True,
                      help="Sample the next token (the default).")
    mode.add_argument("--greedy", dest="do_sample", action="store_false",
                      help="Take the most likely next token; the sampling settings are then ignored.")
    parser.add_argument("--temperature", type=float, default=0.8, help="Sampling temperature.")
    parser.add_argument("--top_k", type=int, default=50, help="Sample among the k most likely tokens (0: all).")
    parser.add_argument("--top_p", type=float, default=0.95, help="Sample within this probability mass (nucleus).")
    parser.add_argument("--repetition_penalty", type=float, default=1.0, help="Above 1 discourages repeats.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed for sampling.")
    parser.add_argument("--device", default="auto",
                        help="'auto' (a GPU that works, else Apple MPS, else CPU), or a torch device: cpu, cuda:0...")
    return parser.parse_args(argv)


def model_problem(path: str) -> str | None:
    """Why `path` is not a folder holding a saved model, or None. Checked before loading because
    transformers reads a missing local path as a Hub id."""
    if not os.path.isdir(path):
        return f"{path} is not a folder"
    if not os.path.isfile(os.path.join(path, "config.json")):
        return f"{path} holds no config.json: not a run output_dir or checkpoint folder"
    return None


def load(path: str, device: torch.device):
    # local_files_only: a folder's remote code and tokenizer never trigger a Hub lookup, whatever HF_HUB_OFFLINE says.
    # AutoTokenizer reads config.json too, and its auto_map makes it ask on stdin without trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, local_files_only=True)
    return tokenizer, model.to(device).eval()


@torch.no_grad()
def complete(model, tokenizer, prompt: str, args: argparse.Namespace) -> str:
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    # sampling settings are passed only when sampling: with do_sample=False transformers warns about them
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p) if args.do_sample else {}
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                            repetition_penalty=args.repetition_penalty, pad_token_id=tokenizer.eos_token_id,
                            **sampling)
    return prompt + tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = model_problem(args.path)
    if problem is None and not all(args.prompts):
        problem = "empty prompt: the model needs at least one token to continue"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    device = default_device() if args.device == "auto" else torch.device(args.device)
    try:
        tokenizer, model = load(args.path, device)
    except (OSError, ValueError) as err:
        print(f"error: cannot load {args.path}: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    set_seed(args.seed)
    for i, prompt in enumerate(args.prompts):
        if i:
            print("-" * 40)
        print(complete(model, tokenizer, prompt, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
