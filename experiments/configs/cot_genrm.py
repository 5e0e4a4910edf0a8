r"""CoT-GenRM (Mahan et al., Eq. 8): SFT on a rationale and its verdict with the judge prompt; judged by sampled
judgments (`judge`, as every CoT judge here).

  python -m experiments.cot_genrm --workdir runs/cot_genrm [--config=experiments/configs/cot_genrm.py:PRESET] [--config.x.y=...]

Rationales: `data.rationales_path`, a JSONL file of {prompt, chosen, rejected, rationale (chosen shown as A,
ending [[A]]), rationale_swapped (optional: chosen shown as B, ending [[B]])}, e.g. written by a stronger judge;
its rows are then the training pairs. Empty (the default; the bundled data has no rationales): the model writes
them itself with the true label as a hint, which is exactly one Rationalizer round over the training pairs,
sampled with `star` (samples per pair, temperature, top_p, max_new_tokens, verdict, chunk).

Presets: smoke, default, small, paper (experiments/configs/presets.py)."""
from experiments.configs import presets


def get_config(arg: str | None = None):
    preset = arg or "default"
    c = presets.base(preset, "cot_genrm")
    c.data.rationales_path = ""
    for field in ("iterations", "parts"):  # one round, fixed by the method
        del c.star[field]
    if preset != "smoke":
        c.train.learning_rate = 2e-5  # the paper's rationalizer SFT rate (the default is one Rationalizer round)
    return c
