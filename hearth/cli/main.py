"""The `hearth` command line: parse options, make one library call, print the result.

One module per command family: chat (generate, run), serve, measure (perplexity, eval, quantize), store (pull, list,
show, rm, cp, verify, export, import), customize (tune, distill, export-weights, export-adapter); options holds what
several share. This module builds the typer `app` from them, in the order `hearth --help` lists them, and `main`
turns every user mistake into one line on stderr (`error: ...`) and a non-zero exit.
"""

from __future__ import annotations

import logging
import sys

import click
import typer

from hearth.cli import chat, customize, flywheel, guard, measure, redteam, release, serve, store
from hearth.cli import audit as audit_cli
from hearth.cli import cost as cost_cli
from hearth.cli import license as license_cli
from hearth.errors import HearthError, Interrupted

# typer >= 0.20 vendors its own copy of click (typer._click) and raises its exceptions, not click's.
try:
    from typer._click import exceptions as _typer_click
except ImportError:  # older typer: plain click
    _typer_click = click.exceptions
_NO_ARGS = (click.exceptions.NoArgsIsHelpError, _typer_click.NoArgsIsHelpError)
_USAGE = (click.exceptions.UsageError, _typer_click.UsageError)
_ABORT = (click.exceptions.Abort, typer.Abort)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="hearth: run, serve and own open-weights Llama-family models, offline.",
)

def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"hearth {version('hearth')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print hearth's version and exit."),
) -> None:
    pass


# The order of registration is the order of `hearth --help`.
app.command()(chat.generate)
app.command()(chat.run)
app.command()(serve.serve)
app.command()(measure.perplexity)
app.command("eval")(measure.eval_)
app.command()(measure.quantize)
app.command()(store.pull)
app.command("list")(store.list_models)
app.command()(store.show)
app.command()(store.rm)
app.command()(store.cp)
app.command()(store.verify)
app.command()(store.export)
app.command("import")(store.import_bundle)
app.command()(customize.tune)
app.command()(customize.distill)
app.command("export-weights")(customize.export_weights)
app.command("export-adapter")(customize.export_adapter)
app.add_typer(guard.app, name="guard")
app.command()(redteam.redteam)
app.add_typer(release.app, name="release")
app.add_typer(license_cli.app, name="license")
app.add_typer(flywheel.capture_app, name="capture")
app.add_typer(flywheel.feedback_app, name="feedback")
app.command()(cost_cli.cost)
app.add_typer(audit_cli.app, name="audit")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="hearth: %(message)s")
    from hearth import netguard

    netguard.install()  # never online: refuse any connection that is not to loopback, from here on
    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=argv, prog_name="hearth", standalone_mode=False)
    except _NO_ARGS as e:
        print(e.format_message(), file=sys.stderr)
        return 0
    except _USAGE as e:
        hint = f" (see: {e.ctx.command_path} --help)" if e.ctx else ""
        msg = " ".join(e.format_message().split())  # one line, whatever the message
        print(f"error: {msg}{hint}", file=sys.stderr)
        return 2
    except _ABORT:
        return 130
    except HearthError as e:
        from hearth.textsafe import terminal_safe  # messages quote values read from files: no escape sequence gets through

        print(f"error: {terminal_safe(e)}", file=sys.stderr)
        return 130 if isinstance(e, Interrupted) else 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except SystemExit:  # click turns a closed stdout pipe (`hearth list | head -1`) into exit(1): not an error
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            return 0
        raise
    return rv if isinstance(rv, int) else 0  # --help and Ctrl-C (Exit) come back as an exit code


if __name__ == "__main__":
    sys.exit(main())
