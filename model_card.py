"""Write a model card (`README.md`, Hub format) into a finished run's output_dir.

    python model_card.py runs/demo --data "CPython's bundled docs (demo_corpus.py)"
    python model_card.py runs/demo --data "cosmopedia-v2" --hub_model_id me/smollm2-demo

The training app writes the same card at the end of training, with its recipe settings (`pretraining/model_card.py`).
Run as a command it reads the architecture from `config.json` and lists the settings of `--training_args` if given.
"""

import sys

import torch
import yaml

from configuration_smollm2 import SmolLM2Config
from modeling_smollm2 import SmolLM2ForCausalLM
from pretraining.errors import OneLineParser, report
from pretraining.model_card import write_model_card


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description="Write README.md (a model card) into a finished run's output_dir.")
    parser.add_argument("output_dir", help="The run's output_dir (config.json, weights, training_log.jsonl).")
    parser.add_argument("--data", required=True, help="One or two sentences on the training data.")
    parser.add_argument("--training_args", help="YAML or JSON file of recipe settings to list, e.g. the run's "
                                                "configs/*.yaml. Default: no settings table.")
    parser.add_argument("--hub_model_id", help="Hub repository id to show in the loading code. Default: the folder.")
    parser.add_argument("--license", default="apache-2.0", help="License identifier for the card's metadata.")
    try:
        args = parser.parse_args(argv)
        config = SmolLM2Config.from_pretrained(args.output_dir)
        with torch.device("meta"):  # the parameter count of the architecture, without allocating weights
            num_parameters = SmolLM2ForCausalLM(config).num_parameters()
        training_args = {}
        if args.training_args:
            with open(args.training_args, encoding="utf-8") as f:
                training_args = yaml.safe_load(f) or {}  # YAML is a superset of JSON: one loader for both
        print(write_model_card(args.output_dir, model_config=config, num_parameters=num_parameters,
                               data_description=args.data, training_args=training_args,
                               hub_model_id=args.hub_model_id, license=args.license))
    except (OSError, ValueError, yaml.YAMLError) as err:
        return report(err, show_traceback=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
