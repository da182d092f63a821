"""Start-up: heavy imports load only where used, and the thread count a fit chooses."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from overparam_lit.threads import ENV, choose_threads, limit_blas, thread_env
from overparam_lit.utils import ConfigError

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "overparam_lit"
HEAVY = ("wandb", "matplotlib", "scipy", "torch_pruning", "submitit", "threadpoolctl")
NEVER = ("wandb", "torch_pruning", "submitit", "threadpoolctl")
"""Not imported by Lightning itself either: never loaded by a start-up path."""

WRAPPER = """
import runpy, sys
out, sys.argv = sys.argv[1], ["overparam-lit", *sys.argv[2:]]
try:
    runpy.run_module("overparam_lit", run_name="__main__")
finally:
    with open(out, "w") as fh:
        fh.write("\\n".join(sys.modules))  # in the order they were loaded
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", ENV)}
    return {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _modules(tmp_path: Path, code: str | None = None, argv: tuple[str, ...] = ()) -> tuple[set[str], str]:
    """The modules loaded by ``python -c code`` or by ``overparam-lit ARGV``, and its stdout."""
    out = tmp_path / "modules.txt"
    if code is not None:
        dump = f"\nimport sys; open({str(out)!r}, 'w').write('\\n'.join(sys.modules))"
        cmd = [sys.executable, "-c", code + dump]
    else:
        script = tmp_path / "wrap.py"
        script.write_text(WRAPPER)
        cmd = [sys.executable, str(script), str(out), *argv]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.is_file(), proc.stderr[-3000:]
    return set(out.read_text().split()), proc.stdout


@pytest.fixture(scope="module")
def lightning_modules(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """What ``import lightning.pytorch`` loads by itself (torchmetrics pulls scipy and matplotlib)."""
    return _modules(tmp_path_factory.mktemp("lightning"), "import lightning.pytorch")[0]


def _outside_functions(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return []
    return [node, *(n for child in ast.iter_child_nodes(node) for n in _outside_functions(child))]


def heavy_importers() -> set[str]:
    """Our modules that import a heavy package at their top level (not inside a function)."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        nodes = [n for n in tree.body
                 if not (isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))]
        for node in (n for top in nodes for n in _outside_functions(top)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] in HEAVY for name in names):
                parts = path.relative_to(REPO).with_suffix("").parts
                found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def check_light(modules: set[str], lightning: set[str]) -> None:
    assert not [m for m in NEVER if m in modules]
    assert not [m for m in HEAVY if m in modules and m not in lightning]
    assert not sorted(heavy_importers() & modules)
    studies = {m for m in modules if m.startswith("overparam_lit.studies.")}
    # results and grid are light; members_study only declares the members table for the registry
    assert studies <= {"overparam_lit.studies.results", "overparam_lit.studies.grid",
                       "overparam_lit.studies.members_study"}


def test_heavy_importers_are_found() -> None:
    assert {"overparam_lit.pruning.structured", "overparam_lit.regions.render"} <= heavy_importers()


def test_import_cli_is_light(tmp_path: Path, lightning_modules: set[str]) -> None:
    modules, _ = _modules(tmp_path, "import overparam_lit.cli")
    check_light(modules, lightning_modules)
    assert not any(m.startswith("overparam_lit.studies") for m in modules)


@pytest.mark.parametrize("argv", [("--help",), ("fit", "--help")])
def test_help_is_light(tmp_path: Path, lightning_modules: set[str], argv: tuple[str, ...]) -> None:
    modules, out = _modules(tmp_path, argv=argv)
    assert "--trainer" in out or "sweep" in out
    check_light(modules, lightning_modules)


def test_fit_without_wandb_is_light_and_says_its_threads(tmp_path: Path, lightning_modules: set[str]) -> None:
    modules, out = _modules(tmp_path, argv=(
        "fit", "-c", "configs/quickstart.yaml", "--trainer.max_epochs", "1", "--data.num_samples", "200",
        "--wandb.mode", "disabled", "--trainer.default_root_dir", str(tmp_path / "run"), "--threads", "2"))
    assert "overparam_lit.callbacks.hessian" in modules  # the callbacks are importable by short name
    check_light(modules, lightning_modules)
    assert out.splitlines()[0] == "overparam-lit fit: threads 2 (--threads)", out[:500]
    assert (tmp_path / "run" / "metrics.csv").is_file()


def test_callback_short_names_still_resolve(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "overparam_lit", "fit", "--trainer.callbacks.help", "HessianProbe"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--trainer.callbacks.lanczos_iters" in proc.stdout, proc.stderr[-2000:]



COLLECTOR = """
import atexit, gc, json, sys
was = sys.argv[1] == "on"
if not was:
    gc.disable()
import overparam_lit.cli
from overparam_lit.cli import commands
state = {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
for args in (["--help"], None):  # a caller's arguments, then sys.argv as overparam-lit reads it
    before, handlers = gc.get_freeze_count(), atexit._ncallbacks()
    junk = [[] for _ in range(1000)]  # made after the imports
    sys.argv = ["overparam-lit", "--help"]
    try:
        commands.main(args)
    except SystemExit:
        pass
    state["args" if args else "argv"] = [gc.get_freeze_count() > before, atexit._ncallbacks() - handlers]
print(json.dumps(state))
"""


@pytest.mark.parametrize("collector", ["on", "off"])
def test_cli_import_freezes_its_objects_and_keeps_the_collector(collector: str) -> None:
    """The collector pauses during the CLI's imports and resumes as it was; what they built is
    frozen. Only ``overparam-lit`` itself (main reading sys.argv) freezes later objects and again
    at exit; a caller passing arguments keeps its collector as it is."""
    proc = subprocess.run([sys.executable, "-c", COLLECTOR, collector], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(proc.stdout.splitlines()[-1])
    assert state["enabled"] is (collector == "on")
    assert state["frozen"] > 100_000  # Lightning, torch and ours: about half a million
    assert state["args"] == [False, 0]
    assert state["argv"][0] is True and state["argv"][1] >= 1  # gc.freeze registered for exit


# ---- W&B ahead of Lightning -----------------------------------------------------------------------
@pytest.mark.parametrize("args, env, expect", [
    (["fit", "-c", "configs/quickstart.yaml"], {}, "offline"),  # auto without credentials
    (["fit", "--wandb.mode", "disabled"], {}, "disabled"),
    (["fit", "--wandb.mode=disabled"], {}, "disabled"),
    (["fit", "--wandb.mode", "disabled", "--wandb.mode", "online"], {}, "online"),  # the last counts
    (["fit"], {"WANDB_MODE": "disabled"}, "disabled"),
    (["fit"], {"WANDB_MODE": "DISABLED"}, "disabled"),
    (["fit"], {"WANDB_MODE": "dryrun"}, "offline"),
    (["fit", "--wandb.mode", "offline"], {"WANDB_MODE": "disabled"}, "offline"),  # env decides auto only
    (["fit", "-c", "CFG_OFF"], {}, "disabled"),
    (["fit", "--config=CFG_OFF"], {}, "disabled"),
    (["fit", "-c", "CFG_OFF", "--wandb.mode", "online"], {}, "online"),
    (["fit", "-c", "CFG_OFF", "-c", "configs/quickstart.yaml"], {}, "disabled"),  # sets no mode
    (["fit", "-c", "no/such/file.yaml"], {}, "offline"),
    (["fit", "--wandb", "{mode: online}"], {}, None),  # a form it does not read: no early start
    (["test", "-c", "configs/quickstart.yaml"], {"WANDB_MODE": "online"}, "online"),
    (["fit", "--help"], {}, "disabled"),
    (["fit", "-c", "configs/quickstart.yaml", "--print_config"], {}, "disabled"),
    (["sweep", "-c", "configs/quickstart.yaml"], {}, "disabled"),
    (["predict"], {}, "disabled"),
    ([], {}, "disabled"),
    (["fit"], {"LOCAL_RANK": "1"}, "disabled"),
    (["fit"], {"SLURM_PROCID": "3"}, "disabled"),
    (["fit"], {"SLURM_PROCID": "0", "WANDB_MODE": "offline"}, "offline"),
])
def test_command_wandb_mode(tmp_path: Path, monkeypatch, args: list[str], env: dict[str, str],
                            expect: str | None) -> None:
    from overparam_lit import wandb_mode

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(wandb_mode, "wandb_has_credentials", lambda: False)
    off = tmp_path / "off.yaml"
    off.write_text("wandb:\n  mode: disabled\n")
    args = [a.replace("CFG_OFF", str(off)) for a in args]
    assert wandb_mode.command_wandb_mode(args, env) == expect


def test_command_wandb_mode_reads_a_packaged_fragment(tmp_path: Path, monkeypatch) -> None:
    """``-c configs/x.yaml`` missing from the working folder is the packaged fragment, for the
    reader as for the CLI."""
    from overparam_lit import fragments, wandb_mode

    packaged = tmp_path / "packaged"
    (packaged / "configs").mkdir(parents=True)
    (packaged / "configs" / "off.yaml").write_text("wandb:\n  mode: disabled\n")
    monkeypatch.setattr(fragments, "FRAGMENTS", packaged)
    monkeypatch.chdir(tmp_path)
    assert wandb_mode.command_wandb_mode(["fit", "-c", "configs/off.yaml"], {}) == "disabled"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "off.yaml").write_text("wandb:\n  mode: online\n")  # the local file wins
    assert wandb_mode.command_wandb_mode(["fit", "-c", "configs/off.yaml"], {}) == "online"


@pytest.mark.parametrize("extra, env", [
    ([], {}),
    (["--wandb.mode", "disabled"], {}),
    (["-c", "OFF"], {}),
    (["-c", "OFF", "--wandb.mode", "offline"], {}),
    ([], {"WANDB_MODE": "disabled"}),
    (["--wandb.mode", "online"], {"WANDB_MODE": "disabled"}),
])
def test_command_wandb_mode_agrees_with_the_cli(tmp_path: Path, monkeypatch, extra: list[str],
                                                env: dict[str, str]) -> None:
    """The mode read from the command line equals the one the CLI resolves from the parsed config."""
    from overparam_lit.cli import OverparamCLI
    from overparam_lit.wandb_mode import command_wandb_mode

    off = tmp_path / "off.yaml"
    off.write_text("wandb:\n  mode: disabled\n")
    extra = [str(off) if a == "OFF" else a for a in extra]
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = ["-c", str(REPO / "configs" / "quickstart.yaml"), *extra,
            "--trainer.default_root_dir", str(tmp_path / "run")]
    cli = OverparamCLI(run=False, args=args)
    assert command_wandb_mode(["fit", *args]) == cli.wandb_mode


def test_an_early_wandb_start_of_another_mode_is_undone(monkeypatch) -> None:
    """The CLI resolved another mode than the command line suggested: the early start is torn
    down and the environment it changed is as before; the same mode keeps it."""
    import wandb

    from overparam_lit import entry

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    torn = []
    monkeypatch.setattr(wandb, "teardown", lambda *a, **k: torn.append(True))
    monkeypatch.setattr(wandb, "setup", lambda *a, **k: None)
    entry.start_wandb_early("offline")
    assert os.environ["WANDB_MODE"] == "dryrun" and os.environ["WANDB_SILENT"] == "true"
    entry.settle_early_wandb("disabled")
    assert torn == [True] and os.environ["WANDB_MODE"] == "offline" and "WANDB_SILENT" not in os.environ
    entry.settle_early_wandb("disabled")  # settled once
    assert torn == [True]
    entry.start_wandb_early("offline")
    entry.settle_early_wandb("offline")
    assert torn == [True] and os.environ["WANDB_MODE"] == "dryrun"


def test_a_fit_with_wandb_imports_it_before_lightning(tmp_path: Path) -> None:
    """``overparam-lit fit`` with W&B on loads W&B's launch-inputs module before Lightning (the
    modules are recorded in the order they were loaded)."""
    modules, _ = _modules(tmp_path, argv=(
        "fit", "-c", "configs/quickstart.yaml", "--trainer.max_epochs", "1", "--data.num_samples", "200",
        "--trainer.default_root_dir", str(tmp_path / "run")))
    order = (tmp_path / "modules.txt").read_text().split()
    assert order.index("wandb.sdk.launch.inputs.internal") < order.index("lightning")
    assert (tmp_path / "run" / "wandb").is_dir()


def test_an_early_wandb_start_is_undone_when_the_config_turns_loggers_off(tmp_path: Path) -> None:
    """The command line suggests an offline W&B run, the trainer config has no loggers: the fit
    runs without W&B and its summary names no metrics file."""
    modules, out = _modules(tmp_path, argv=(
        "fit", "-c", "configs/quickstart.yaml", "--trainer.max_epochs", "1", "--data.num_samples", "200",
        "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run")))
    assert "wandb" in modules  # started early, then undone
    assert "Run folder:" in out and "Metrics:" not in out and "wandb sync" not in out
    assert not (tmp_path / "run" / "wandb").exists() and not (tmp_path / "run" / "metrics.csv").exists()


# ---- the lazy packages ---------------------------------------------------------------------------
def test_lazy_package_names_are_the_functions() -> None:
    import importlib

    lanczos_module = importlib.import_module("overparam_lit.curvature.lanczos")  # the submodule first
    from overparam_lit import curvature, escape, pruning, regions, studies
    from overparam_lit.curvature import lanczos

    assert callable(lanczos) and lanczos is lanczos_module.lanczos
    assert curvature.slq is importlib.import_module("overparam_lit.curvature.slq").slq
    assert callable(escape.widen) and not isinstance(escape.widen, type(os))
    for package in (curvature, escape, pruning, regions, studies):
        assert all(hasattr(package, name) for name in package.__all__)
        assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError):
        _ = pruning.no_such_name


# ---- threads ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cores, load, env, flag, expect", [
    (2, 0.0, {}, None, (1, "2 cores")),
    (1, 0.0, {}, None, (1, "1 core")),
    (8, 0.2, {}, None, (4, "torch default, 8 cores, load 0.2")),
    (8, None, {}, None, (4, "torch default, 8 cores")),
    (8, 7.4, {}, None, (1, "load 7.4 on 8 cores")),
    (8, 5.0, {}, None, (3, "load 5.0 on 8 cores")),
    (2, 0.0, {"OMP_NUM_THREADS": "2"}, None, (2, "OMP_NUM_THREADS")),
    (2, 0.0, {"OMP_NUM_THREADS": "2", ENV: "3"}, None, (3, ENV)),
    (2, 0.0, {"OMP_NUM_THREADS": "2", ENV: "3"}, 4, (4, "--threads")),
    (8, 7.9, {ENV: " "}, None, (1, "load 7.9 on 8 cores")),
])
def test_thread_rule(cores: int, load: float | None, env: dict[str, str], flag: int | None,
                     expect: tuple[int, str]) -> None:
    choice = choose_threads(cores, load, env, flag, torch_default=4)
    assert (choice.threads, choice.reason) == expect
    assert str(choice) == f"threads {expect[0]} ({expect[1]})"


@pytest.mark.parametrize("env, flag", [({}, 0), ({ENV: "many"}, None), ({"OMP_NUM_THREADS": "-1"}, None)])
def test_thread_rule_refuses_bad_counts(env: dict[str, str], flag: int | None) -> None:
    with pytest.raises(ConfigError, match="positive number of threads"):
        choose_threads(4, 0.0, env, flag, torch_default=4)


def test_thread_env_keeps_what_is_set() -> None:
    assert thread_env(2, {"MKL_NUM_THREADS": "5"}) == {
        ENV: "2", "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    environ = {"OMP_NUM_THREADS": "3"}
    assert limit_blas(1, environ) == ["OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"]
    assert environ == {"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_default_fit_line_names_the_choice(tmp_path: Path) -> None:
    """``overparam-lit fit`` prints its thread count first, and a DDP rank would inherit it."""
    code = (
        "import os, sys, json\n"
        "from overparam_lit.cli import main\n"
        f"sys.argv = ['overparam-lit', 'fit', '-c', 'configs/quickstart.yaml', '--trainer.max_epochs', '1',"
        " '--data.num_samples', '200', '--wandb.mode', 'disabled',"
        f" '--trainer.default_root_dir', {str(tmp_path / 'r')!r},"
        " '--test_after_fit', 'false', '--trainer.enable_checkpointing', 'false']\n"
        "import lightning.pytorch as pl\n"
        "seen = {}\n"
        "orig = pl.Trainer.fit\n"
        "def fit(self, *a, **k):\n"
        "    import torch\n"
        f"    seen.update(env=os.environ.get({ENV!r}), torch=torch.get_num_threads())\n"
        "    return orig(self, *a, **k)\n"
        "pl.Trainer.fit = fit\n"
        "main()\n"
        f"print(json.dumps({{**seen, 'after': os.environ.get({ENV!r})}}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    first, seen = lines[0], json.loads(lines[-1])
    n = seen["torch"]
    assert first.startswith(f"overparam-lit fit: threads {n} (")
    assert seen["env"] == str(n) and seen["after"] is None  # set for child processes, then restored
    if len(os.sched_getaffinity(0)) <= 2:
        assert first == f"overparam-lit fit: threads 1 ({len(os.sched_getaffinity(0))} cores)"
