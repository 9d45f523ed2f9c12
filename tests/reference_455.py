"""Runs transformers 4.55.4's generate() for the tests (see legacy.py): contrastive search and
group beam search, which transformers 5.x no longer ships. Executed in a subprocess whose
PYTHONPATH puts 4.55.4 first, so the pinned 5.x in the test environment stays untouched.

stdin: {"checkpoint": dir, "cases": [{"input_ids", "attention_mask", "kwargs"}, ...]}
stdout: [{"sequences": [[...]], "sequences_scores": [...] or null}, ...]
With `--serve CHECKPOINT THREADS` it is the benchmark's worker instead: a case per line on stdin,
its generate()'s seconds per line on stdout ({"seconds"}).
"""

import json
import sys
import time
import warnings

import torch
import transformers
from transformers import GPT2LMHeadModel

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
assert transformers.__version__ == "4.55.4", transformers.__version__



def generate(model, case: dict):
    with torch.no_grad():
        return model.generate(input_ids=torch.tensor(case["input_ids"]), attention_mask=torch.tensor(case["attention_mask"]),
                              return_dict_in_generate=True, output_scores=True, **case["kwargs"])


if sys.argv[1:2] == ["--serve"]:  # the benchmark's worker: one case per line in, its seconds out
    model = GPT2LMHeadModel.from_pretrained(sys.argv[2]).eval()
    torch.set_num_threads(int(sys.argv[3]))
    for line in sys.stdin:
        started = time.perf_counter()
        generate(model, json.loads(line))
        print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)
else:
    request = json.load(sys.stdin)
    model = GPT2LMHeadModel.from_pretrained(request["checkpoint"]).eval()
    results = []
    for case in request["cases"]:
        out = generate(model, case)
        scores = getattr(out, "sequences_scores", None)
        results.append({"sequences": out.sequences.tolist(), "sequences_scores": None if scores is None else scores.tolist()})
    json.dump(results, sys.stdout)
