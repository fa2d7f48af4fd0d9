from tga_hf.cli import main
from tga_hf.demo import run_tiny_demo


def test_tiny_demo_round_trips_through_auto_classes(tmp_path):
    answers = run_tiny_demo(tmp_path, seed=0)
    assert set(answers) == {"plain", "retrieval"}
    assert all(isinstance(answer, str) and answer for answer in answers.values())
    assert (tmp_path / "model" / "modeling_tga_llava.py").is_file()


def test_cli_demo_command(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    assert "trust_remote_code=True" in capsys.readouterr().out
