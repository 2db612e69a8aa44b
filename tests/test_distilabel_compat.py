"""distilabel's private parts behind one door (magpie_dl.distilabel_compat): the names it uses
exist, a mismatch is one line, and importing our steps changes nothing in distilabel."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import pytest

from magpie_dl import distilabel_compat
from magpie_dl.config.dpo import REPO_ROOT


@pytest.mark.parametrize("module, owner, name, params", distilabel_compat.PRIVATE_NAMES,
                         ids=[f"{o or m}.{n}" for m, o, n, _ in distilabel_compat.PRIVATE_NAMES])
def test_every_private_name_used_exists_with_its_signature(module, owner, name, params):
    import inspect

    holder = importlib.import_module(module)
    found = getattr(getattr(holder, owner) if owner else holder, name)
    if params is not None:
        assert tuple(inspect.signature(found).parameters)[: len(params)] == params


def test_the_installed_distilabel_passes_the_check():
    distilabel_compat.check()


def test_another_release_is_refused_in_one_line(monkeypatch):
    import distilabel

    monkeypatch.setattr(distilabel, "__version__", "1.6.0")
    with pytest.raises(distilabel_compat.DistilabelMismatch) as refused:
        distilabel_compat.check()
    message = str(refused.value)
    assert "\n" not in message and "found 1.6.0" in message and "pip install 'distilabel==1.5.3'" in message


def test_a_moved_name_is_named(monkeypatch):
    from distilabel.pipeline.base import BasePipeline

    monkeypatch.delattr(BasePipeline, "_register_batch")
    with pytest.raises(distilabel_compat.DistilabelMismatch, match=r"missing: BasePipeline\._register_batch"):
        distilabel_compat.check()


# Every class of distilabel's we reach into, by the identity of each entry of its __dict__.
SNAPSHOT = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    from distilabel.pipeline import Pipeline, RayPipeline
    from distilabel.pipeline.base import BasePipeline
    from distilabel.pipeline.batch_manager import _BatchManager
    from distilabel.pipeline.step_wrapper import _StepWrapper
    from distilabel.pipeline.write_buffer import _WriteBuffer
    from distilabel.steps import GeneratorStep, GlobalStep, Step

    CLASSES = (BasePipeline, Pipeline, RayPipeline, _BatchManager, _StepWrapper, _WriteBuffer, Step, GeneratorStep, GlobalStep)

    def snapshot():
        return {f"{c.__name__}.{k}": id(v) for c in CLASSES for k, v in vars(c).items()}

    before = snapshot()
    import magpie_dl, magpie_dl.steps, magpie_dl.pipelines
    for package in (magpie_dl, magpie_dl.steps, magpie_dl.pipelines):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    after = snapshot()
    print(json.dumps({"imported": len([m for m in sys.modules if m.startswith("magpie_dl")]),
                      "changed": sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))}))
    """
)


def test_importing_any_of_our_modules_leaves_distilabel_s_classes_unchanged(tmp_path):
    script = tmp_path / "snapshot.py"
    script.write_text(SNAPSHOT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["imported"] > 80  # every module under magpie_dl/, steps/ and pipelines/
    assert seen["changed"] == []


def test_a_run_s_hooks_are_on_its_pipeline_alone_and_gone_after_it(tmp_path):
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    with Pipeline(name="hooks", cache_dir=str(tmp_path)) as pipeline:
        LoadDataFromDicts(data=[{"a": 1}])
    with Pipeline(name="other", cache_dir=str(tmp_path)) as other:
        LoadDataFromDicts(data=[{"a": 1}])
    hooked = {"_register_batch", "_manage_batch_flow", "_request_initial_batches", "_notify_steps_to_stop"}
    with distilabel_compat.patched(pipeline):
        assert hooked <= set(vars(pipeline))
        assert not hooked & set(vars(other))
    assert not hooked & set(vars(pipeline))
