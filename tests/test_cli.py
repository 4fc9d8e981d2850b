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


def test_every_command_is_named_once_with_the_help_its_module_gives():
    import argparse

    from common.cli import COMMANDS, load_command

    for name, (_, help_text) in COMMANDS.items():
        subparsers = argparse.ArgumentParser().add_subparsers()
        load_command(name)(subparsers)
        assert list(subparsers.choices) == [name]
        assert [a.help for a in subparsers._choices_actions] == [help_text], name


def test_help_imports_no_command_module():
    code = ("import sys; from common.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'client', 'server', 'flwr')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
