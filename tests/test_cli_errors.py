"""Bad input to every command: exit code 2, ONE line naming the file / key / flag, no traceback, and
nothing written or changed (every file under the test folder is hashed before and after).

The mains run in-process through boom_jax.cli (flag parsing and the error guard, as `python -m` does);
two real subprocesses prove that stderr carries no traceback there either.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from absl import flags

from boom_jax import cli
from boom_jax.training.workdir_lock import WorkdirLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


# ------------------------------------------------------------------------------------------------
# Fixtures: a tiny HF folder, a model folder made from it, folders with pieces missing, bad data files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from helpers_tiny_models import make_tiny_bert_folder

    from boom_jax.model_io import load_model, save_model_folder

    root = tmp_path_factory.mktemp("cli")
    hf = make_tiny_bert_folder(root / "hf")
    cfg, params, tok = load_model(hf)
    model = save_model_folder(str(root / "model"), cfg, params, tok)
    no_tok = save_model_folder(str(root / "model_no_tok"), cfg, params, None)
    bare = root / "bare"  # config.json only: a random-init source without tokenizer files
    bare.mkdir()
    (bare / "config.json").write_text((root / "hf" / "config.json").read_text())
    (root / "texts.txt").write_text("a text\nanother text\n")
    (root / "bad.jsonl").write_text('{"text": "ok"}\n{"text": "x",}\n')
    good = [json.dumps({"query": f"q{i}", "pos": [f"p{i}"], "neg": [f"n{i}"]}) for i in range(20)]
    (root / "data").mkdir()
    (root / "data" / "good.jsonl").write_text("\n".join(good) + "\n")
    (root / "data" / "badjson.jsonl").write_text(good[0] + "\n" + '{"query": "q", "pos": ["p"],, "neg": []}\n')
    (root / "data" / "nopos.jsonl").write_text(good[0] + "\n" + json.dumps({"query": "q", "pos": []}) + "\n")
    (root / "data" / "small.jsonl").write_text("\n".join(good[:3]) + "\n")
    (root / "data" / "dups.jsonl").write_text("\n".join([good[0]] * 12) + "\n")
    (root / "data" / "empty.jsonl").write_text("\n")
    (root / "data" / "typo.jsonl").write_text("\n".join(json.dumps({"query": f"q{i}", "pos": [f"p{i}"],
                                                                       "type": "retrival"}) for i in range(20)) + "\n")
    (root / "afile").write_text("not a folder\n")
    (root / "out_full").mkdir()
    (root / "out_full" / "keep.txt").write_text("keep\n")
    (root / "existing.npy").write_bytes(b"npy")
    (root / "locked").mkdir()
    (root / "datacfg.py").write_text(DATA_CONFIG.format(root=ROOT, data=str(root / "data")))
    (root / "badconfig.py").write_text("def get_config(arg=None):\n    raise ValueError('badconfig.py: broken on purpose')\n")
    damaged = root / "damaged"  # a model folder whose params/ holds no checkpoint (copied in part)
    (damaged / "params").mkdir(parents=True)
    (damaged / "model_config.json").write_text((root / "model" / "model_config.json").read_text())
    shutil.copytree(root / "model" / "tokenizer", damaged / "tokenizer")
    return {"root": str(root), "hf": hf, "model": model, "no_tok": no_tok, "bare": str(bare), "damaged": str(damaged)}


DATA_CONFIG = """
import sys
sys.path.insert(0, {root!r})
import ml_collections
from configs import tiny


def get_config(arg):
    c = tiny.get_config("smoke")
    c.data.source = "files"
    name, *extra = (arg or "").split(",")
    spec = {{"path": {data!r} + "/" + name + ".jsonl"}} if name else None
    for item in extra:
        key, value = item.split("=")
        spec[key] = value
    c.data.datasets = ml_collections.ConfigDict({{"a": spec}} if spec else {{}})
    return c
"""


def snapshot(root: str) -> dict[str, str]:
    """Path -> content hash ("dir" for folders) of everything under `root`."""
    out = {}
    for base, dirs, names in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(base, d), root)] = "dir"
        for n in names:
            p = os.path.join(base, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


# ------------------------------------------------------------------------------------------------
# Running one command in-process, as `python -m boom_jax.<command>` would


def _fresh(define, main, argv):
    fv = flags.FlagValues()
    define(fv)
    rest = cli.parse_flags(argv, fv)
    return cli.guard(functools.partial(main, flag_values=fv))(rest)


def run_train(argv):
    from boom_jax import train
    from boom_jax.training.config_validation import ConfigError, check_override_keys

    try:
        check_override_keys(argv)
    except ConfigError as err:
        raise SystemExit(cli.report(err))
    fv = flags.FlagValues()
    train.define_flags(fv, sys_argv=argv)
    rest = cli.parse_flags(argv, fv)
    return cli.guard(functools.partial(train.main, flag_values=fv))(rest)


def run_export(argv):
    from boom_jax import export
    return _fresh(export.define_flags, export.main, argv)


def run_encode(argv):
    from boom_jax import encode
    return _fresh(encode.define_flags, encode.main, argv)


def run_evaluate(argv):
    from boom_jax import evaluate
    return _fresh(evaluate.define_flags, evaluate.main, argv)


def run_experiments(argv):
    from boom_jax.experiments import __main__ as experiments
    return _fresh(experiments.define_flags, experiments.main, argv)


def run_merge(argv):
    from boom_jax import merge  # its flags live on absl's global FLAGS

    flags.FLAGS.unparse_flags()
    rest = cli.parse_flags(argv, flags.FLAGS)
    try:
        return cli.guard(merge.main)(rest)
    finally:
        flags.FLAGS.unparse_flags()


COMMANDS = {"train": run_train, "export": run_export, "encode": run_encode, "evaluate": run_evaluate,
            "experiments": run_experiments, "merge": run_merge}


def T(*args):  # train with the tiny config and a fresh workdir
    return ["train", "--config=" + TINY, "--workdir={root}/wd", *args]


def D(arg):  # train on the files of the fixture's data/ folder (configs written as a file: datacfg.py:ARG)
    return ["train", "--config={root}/datacfg.py:" + arg, "--workdir={root}/wd"]


# (case id, command + argv with {root}/{hf}/{model}/... placeholders, text the one line must contain)
CASES = [
    # --- train: flags and config
    ("train-unknown-key", T("--config.train.batchsize=8"), "config.train.batchsize is not a known key"),
    ("train-bad-type", T("--config.train.batch_size=abc"), "config.train.batch_size=abc"),
    ("train-config-missing", ["train", "--config=configs/nope.py", "--workdir={root}/wd"], "configs/nope.py"),
    ("train-config-arg", ["train", "--config=" + TINY + ":fast", "--workdir={root}/wd"], "unknown argument 'fast'"),
    ("train-config-raises", ["train", "--config={root}/badconfig.py", "--workdir={root}/wd"], "broken on purpose"),
    ("train-extra-arg", T("extra"), "unexpected arguments: extra"),
    ("train-batch-zero", T("--config.train.batch_size=0"), "config.train.batch_size=0 must be >= 1"),
    ("train-lr-negative", T("--config.train.learning_rate=-1.0"), "config.train.learning_rate"),
    ("train-pooling", T("--config.model.pooling=max"), "config.model.pooling='max'"),
    ("train-schedule", T("--config.data.schedule=random"), "config.data.schedule='random'"),
    ("train-on-error", T("--config.data.on_error=ignore"), "config.data.on_error='ignore'"),
    ("train-mesh", T("--config.mesh.data=3"), "config.mesh"),
    ("train-batch-vs-mesh", T("--config.train.batch_size=12"), "config.train.batch_size=12"),
    ("train-builtin-names", T("--config.data.names=nosuchset"), "config.data.names='nosuchset'"),
    # --- train: model folders
    ("train-model-missing", T("--config.model.path={root}/nomodel"), "config.model.path="),
    ("train-model-no-tokenizer", T("--config.model.path={no_tok}", "--config.model.random_init=False",
                                   "--config.model.sizes.hidden_size=32"), "no tokenizer files"),
    ("train-random-no-tokenizer", T("--config.model.path={bare}"), "no tokenizer files"),
    ("train-builtin-model", T("--config.model.path=builtin:other"), "builtin:minilm"),
    # --- train: workdir
    ("train-workdir-file", ["train", "--config=" + TINY, "--workdir={root}/afile"], "--workdir="),
    ("train-workdir-under-file", ["train", "--config=" + TINY, "--workdir={root}/afile/sub"], "is a file"),
    ("train-workdir-locked", ["train", "--config=" + TINY, "--workdir={root}/locked"], "another run is using"),
    # --- train: data files
    ("data-missing-file", D("missing"), "missing.jsonl"),
    ("data-bad-json", D("badjson"), "badjson.jsonl:2: malformed JSON"),
    ("data-no-positive", D("nopos"), "nopos.jsonl:2: field 'pos'"),
    ("data-too-small", D("small"), "3 examples"),
    ("data-dups-too-small", D("dups"), "dups.jsonl"),
    ("data-empty", D("empty"), "0 examples"),
    ("data-unknown-task", D("typo"), "unknown task type 'retrival'"),
    ("data-bad-setting", D("good,shuffle=yes"), "datasets.a"),
    ("data-bad-on-error", D("good,on_error=maybe"), "datasets.a.on_error"),
    ("data-no-datasets", D(""), "config.data.datasets is empty"),
    # --- export
    ("export-missing", ["export", "--checkpoint={root}/nomodel", "--out={root}/exp"], "nomodel"),
    ("export-not-a-model", ["export", "--checkpoint={root}/data", "--out={root}/exp"], "not a model"),
    ("export-damaged", ["export", "--checkpoint={damaged}", "--out={root}/exp"], "damaged/params: no readable parameter checkpoint"),
    ("export-no-tokenizer", ["export", "--checkpoint={no_tok}", "--out={root}/exp"], "no tokenizer files"),
    ("export-out-is-input", ["export", "--checkpoint={model}", "--out={model}", "--overwrite"], "--out="),
    ("export-out-inside-input", ["export", "--checkpoint={model}", "--out={model}/export", "--overwrite"], "is inside the input"),
    ("export-out-not-empty", ["export", "--checkpoint={model}", "--out={root}/out_full"], "not empty"),
    ("export-out-under-file", ["export", "--checkpoint={model}", "--out={root}/afile/exp"], "afile"),
    ("export-no-flags", ["export"], "--checkpoint and --out are required"),
    # --- encode
    ("encode-input-missing", ["encode", "--model={hf}", "--input={root}/none.txt", "--output={root}/e.npy"], "none.txt"),
    ("encode-bad-jsonl", ["encode", "--model={hf}", "--input={root}/bad.jsonl", "--output={root}/e.npy"], "bad.jsonl:2: invalid JSON"),
    ("encode-output-exists", ["encode", "--model={hf}", "--input={root}/texts.txt", "--output={root}/existing.npy"], "existing.npy"),
    ("encode-output-is-input", ["encode", "--model={hf}", "--input={root}/texts.txt", "--output={root}/texts.txt", "--overwrite"], "--output="),
    ("encode-model-missing", ["encode", "--model={root}/nomodel", "--input={root}/texts.txt", "--output={root}/e.npy"], "nomodel"),
    ("encode-no-tokenizer", ["encode", "--model={no_tok}", "--input={root}/texts.txt", "--output={root}/e.npy"], "no tokenizer files"),
    ("encode-bad-dtype", ["encode", "--model={hf}", "--input={root}/texts.txt", "--output={root}/e.npy", "--dtype=float8"], "--dtype"),
    # --- evaluate
    ("evaluate-model-missing", ["evaluate", "--model={root}/nomodel", "--tasks=builtin", "--out={root}/ev"], "nomodel"),
    ("evaluate-out-inside-model", ["evaluate", "--model={model}", "--tasks=builtin", "--out={model}/eval", "--overwrite"], "is inside the input --model"),
    ("evaluate-out-exists", ["evaluate", "--model={model}", "--tasks=builtin", "--out={root}/out_full"], "already exists"),
    ("evaluate-no-tasks", ["evaluate", "--model={model}", "--out={root}/ev"], "--tasks"),
    ("evaluate-batch-size", ["evaluate", "--model={model}", "--tasks=builtin", "--out={root}/ev", "--batch_size=0"], "--batch_size=0"),
    ("evaluate-names", ["evaluate", "--model={model}", "--name=a", "--name=b", "--tasks=builtin", "--out={root}/ev"], "--name given 2 time(s)"),
    # --- merge
    ("merge-out-is-input", ["merge", "--method=linear", "--out={model}", "--overwrite", "{model}", "{hf}"], "is the input INPUT"),
    ("merge-out-inside-input", ["merge", "--method=linear", "--out={model}/merged", "{model}", "{hf}"], "is inside the input INPUT"),
    ("merge-out-holds-input", ["merge", "--method=linear", "--out={root}", "--overwrite", "{model}", "{hf}"], "holds the input"),
    ("merge-out-is-base", ["merge", "--method=task_arithmetic", "--base={hf}", "--out={hf}", "--overwrite", "{model}"], "--base="),
    ("merge-unknown-method", ["merge", "--method=average", "--out={root}/m", "{model}"], "--method"),
    ("merge-bad-weights", ["merge", "--method=linear", "--weights=a,b", "--out={root}/m", "{model}", "{hf}"], "--weights=a,b"),
    ("merge-no-inputs", ["merge", "--method=linear", "--out={root}/m"], "no INPUT models given"),
    ("merge-missing-input", ["merge", "--method=linear", "--out={root}/m", "{model}", "{root}/nomodel"], "nomodel"),
    ("merge-damaged-input", ["merge", "--method=linear", "--out={root}/m", "{model}", "{damaged}"], "damaged/params: no readable parameter checkpoint"),
    ("merge-nan-lambda", ["merge", "--method=task_arithmetic", "--base={hf}", "--param=lambda_=nan", "--out={root}/m",
                          "{model}"], "lambda_"),
    ("merge-density-range", ["merge", "--method=ties", "--base={hf}", "--param=density=1.5", "--out={root}/m",
                             "{model}"], "density"),
    # --- experiments
    ("experiments-unknown-key", ["experiments", "--config=configs/experiment.py:tiny", "--config.experiment.nokey=1",
                                 "--workdir={root}/ex"], "nokey"),
    ("experiments-no-workdir", ["experiments", "--config=configs/experiment.py:tiny"], "--workdir"),
]


def _fill(argv, files):
    return [a.format(**files) for a in argv]


def test_table_of_bad_inputs(files, capsys):
    assert len(CASES) >= 40
    lock = WorkdirLock(os.path.join(files["root"], "locked")).acquire()  # a live run holds this workdir
    failures, table = [], []
    try:
        for case, argv, expected in CASES:
            argv = _fill(argv, files)
            before = snapshot(files["root"])
            capsys.readouterr()
            with pytest.raises(SystemExit) as exc:
                COMMANDS[argv[0]](["prog"] + argv[1:])
            err = capsys.readouterr().err
            lines = [line for line in err.splitlines() if line.startswith("error: ")]
            after = snapshot(files["root"])
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)
                             and k != os.path.join("locked", ".lock"))
            problem = []
            if exc.value.code != 2:
                problem.append(f"exit code {exc.value.code}")
            if len(lines) != 1 or expected not in lines[0]:
                problem.append(f"expected one 'error:' line containing {expected!r}")
            if "Traceback" in err:
                problem.append("traceback on stderr")
            if changed:
                problem.append(f"changed {changed[:5]}")
            if problem:
                failures.append(f"{case}: {', '.join(problem)}; stderr: {err[-600:]!r}")
            table.append((case, lines[0] if lines else err))
    finally:
        lock.release()
    assert not failures, "\n".join(failures)
    if os.environ.get("BOOM_JAX_PRINT_ERROR_TABLE"):
        print("\n".join(f"| {c} | `{m}` |" for c, m in table))


def test_real_commands_print_one_line_without_traceback(files, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop(cli.TRACEBACK_ENV, None)
    runs = [  # dry_run's flags live on absl's global FLAGS: it runs here only
        [sys.executable, "-m", "boom_jax.training.dry_run", "--config=configs/tiny.py", "--config.train.batch_size=0",
         "--json=" + str(tmp_path / "w" / "report.json")],
        [sys.executable, "-m", "boom_jax.export", "--checkpoint=" + files["model"], "--out=" + files["model"] + "/x"],
    ]
    for argv in runs:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == \
               [proc.stderr.strip().splitlines()[-1]], proc.stderr[-2000:]
    assert not (tmp_path / "w").exists()
    # the documented switch brings the traceback back (same exit code)
    proc = subprocess.run(runs[1], cwd=ROOT, env=dict(env, **{cli.TRACEBACK_ENV: "1"}), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "is inside the input" in proc.stderr


def test_os_errors_read_as_one_line_with_a_hint():
    import errno

    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/model")
    assert cli.is_bad_input(full)
    assert cli.describe(full) == ("/data/run/model: No space left on device; the disk is full; free space or "
                                  "choose another folder (nothing was published)")
    read_only = OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out")
    assert cli.describe(read_only).startswith("/mnt/ro/out: Read-only file system; the file system is read-only")
    assert cli.one_line("a\n  b\n\nc") == "a; b; c"


def test_bugs_keep_their_traceback():
    """An error the project did not raise for the user is not dressed up as bad input."""
    def buggy(argv):
        return {}["missing"]

    with pytest.raises(KeyError):
        cli.guard(buggy)(["prog"])


def test_an_unknown_override_key_is_named_whole_by_every_config_command(tmp_path):
    """ml_collections reports `--config.data.nope=1` as KeyError('nope'); the one line names the whole key
    (commands without train's own override check, e.g. the experiments)."""
    proc = subprocess.run([sys.executable, "-m", "boom_jax.experiments", "--config=configs/experiment.py:tiny",
                           "--config.experiment.seedz=3", f"--workdir={tmp_path / 'ex'}"], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        'error: config.experiment.seedz is not a known key (--config.experiment.seedz); '
        'Did you mean "seeds" instead of "seedz"?']
    assert not (tmp_path / "ex").exists()
