"""nemotron_parity: the NeMo side of the parity checks (needs nemo_toolkit[asr]==3.0.0).

Kept outside `nemotron_engine` so that the engine never imports NeMo: `nemo_harness` drives NeMo's own cache-aware
streaming exactly as NeMo's example script does and builds random test models, `speech` synthesises test speech
with espeak-ng, `report` is the `nemotron-engine parity` command, `bench` the `nemotron-engine bench` command;
`corpus`, `train_demo`, `demo_eval` and `ship_demo` are the demo model's recipe (scripts/train_demo.sh).

A distribution of its own (nemotron-parity, parity/pyproject.toml), not in the engine's wheel: from a clone of the
repository, after the engine, `pip install -e ./parity` (brings NeMo).
"""


def nemo_missing() -> str | None:
    """None when NeMo's ASR collection imports, else the reason."""
    try:
        import nemo.collections.asr  # noqa: F401  (imported only to check it is there)
    except ImportError as e:
        return str(e) or type(e).__name__
    return None
