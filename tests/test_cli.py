import subprocess
import sys

from common.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 2
    assert "version" in capsys.readouterr().out


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("helixfed ")


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "common.cli", "--help"], capture_output=True, text=True,
                            check=True)
    assert "Federated, differentially private" in result.stdout


def test_common_never_imports_client_or_server():
    import ast
    import pathlib

    for path in (pathlib.Path(__file__).parents[1] / "common").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("client", "server") for n in names), f"{path} imports {names}"
