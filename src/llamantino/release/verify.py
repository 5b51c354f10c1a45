"""The `verify` stage: a rebuilt model must equal a reference model bit for bit.

Every tensor of both folders is hashed (sha256 of its raw bytes, one tensor at a time),
and the two sets are compared by name; config.json is compared too, apart from the keys
that only record who wrote it. Any difference is an error naming each tensor.
"""

from __future__ import annotations

import dataclasses

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError

KIND = "verify"
REPORT = "verify.json"
CONFIG_KEYS_IGNORED = ("transformers_version", "_name_or_path")


@dataclasses.dataclass
class Config:
    model: str = setting("", "model folder to check (e.g. a rebuilt one)", path_input=True)
    reference: str = setting("", "model folder it must equal bit for bit", path_input=True)
    output: str = setting("", "folder for the report (verify.json)")

    def validate(self, source):
        for name in ("model", "reference", "output"):
            if not getattr(self, name):
                raise LlamantinoError(f"{source}: setting '{name}' is required")


def _config(folder) -> dict:
    from llamantino.core.fileio import read_json_object, safe_join

    config = read_json_object(safe_join(folder, "config.json", f"model folder {folder}"), "config")
    return {k: v for k, v in config.items() if k not in CONFIG_KEYS_IGNORED}


def compare_models(model, reference) -> dict:
    """Per-tensor sha256 comparison of two model folders."""
    from llamantino.release.weightdiff import tensor_hashes

    mine, theirs = tensor_hashes(model), tensor_hashes(reference)
    a, b = _config(model), _config(reference)
    report = {
        "model": str(model), "reference": str(reference), "tensors": len(theirs),
        "differing": sorted(n for n in mine.keys() & theirs.keys() if mine[n] != theirs[n]),
        "only_in_model": sorted(mine.keys() - theirs.keys()),
        "only_in_reference": sorted(theirs.keys() - mine.keys()),
        "config_keys_differing": sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)),
    }
    report["identical"] = not any(report[k] for k in ("differing", "only_in_model", "only_in_reference",
                                                       "config_keys_differing"))
    return report


def describe(report: dict) -> str:
    if report["identical"]:
        return f"{report['model']}: all {report['tensors']} tensors bit-identical to {report['reference']}"
    parts = [f"{label}: {', '.join(report[key])}" for key, label in (
        ("differing", "tensors differing"), ("only_in_model", "tensors only in the model"),
        ("only_in_reference", "tensors only in the reference"), ("config_keys_differing", "config keys differing"))
        if report[key]]
    return f"{report['model']} is not bit-identical to {report['reference']}: " + "; ".join(parts)


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.fileio import atomic_dir, atomic_write_json
    from llamantino.core.manifest import describe_inputs, prepare_output, read_manifest, write_manifest

    state = prepare_output(cfg.output, KIND, cfg, overwrite=overwrite, replace_later=True)
    if state == "complete":
        return {"status": "skipped (done)", **_summary(read_manifest(cfg.output)["metrics"])}
    report = compare_models(cfg.model, cfg.reference)
    if not report["identical"]:
        raise LlamantinoError(describe(report))
    with atomic_dir(cfg.output) as tmp:
        atomic_write_json(tmp / REPORT, report)
        write_manifest(tmp, KIND, cfg, inputs=describe_inputs([cfg.model, cfg.reference]), metrics=report)
    return {"status": "done", **_summary(report)}


def _summary(report: dict) -> dict:
    return {"headline": {"tensors": report["tensors"], "bit_identical": report["identical"]},
            "display": describe(report), "metrics": report}
