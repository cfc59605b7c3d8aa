"""The ``nfn-derive`` command line: inspect, generate and verify equivariant layers.

Bad input never shows a traceback: the message names what is wrong and where, and the exit
code is 2. No output file is written unless generation succeeds completely.

Commands beyond the built-in ones (``zoo``, ``train`` and ``experiment`` of ``nfn_tasks``) are
discovered through the entry-point group :data:`COMMAND_GROUP`: each entry point loads a
function ``register(subparsers) -> {command name: handler}`` that adds its subcommands to the
argparse subparsers and returns a handler (``args -> exit code``) for each. ``derive`` never
imports a plug-in itself.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from derive.errors import GenerationError, SpecError
from derive.frontend.options import PERMUTE_CHOICES, SCALING_CHOICES

if TYPE_CHECKING:
    from derive.frontend.options import ArchitectureSpec
    from derive.frontend.spec import MLPSpec
    from derive.plan.budget import Budget

__all__ = ["main", "version", "COMMAND_GROUP", "LAYER_CHOICES", "DEFAULT_LAYER", "Handler"]

#: a command's implementation: parsed arguments -> exit code
Handler = Callable[[argparse.Namespace], int]

#: entry-point group of plug-in commands (see the module docstring)
COMMAND_GROUP = "nfn_derive.commands"


class _LayerKindNames:
    """The names of the registered layer kinds (``derive.pipeline.LAYER_KINDS``), read on first
    use: the registry imports torch, which ``--help`` and ``--version`` do not need."""

    def _names(self) -> tuple[str, ...]:
        from derive.pipeline import LAYER_KINDS

        return tuple(LAYER_KINDS)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __repr__(self) -> str:
        return f"LAYER_CHOICES{self._names()!r}"


#: ``verify --memory``: the default budget in GiB
DEFAULT_MEMORY_GB = 8.0
#: the exit code of ``verify`` when a check ran out of memory or time, or was not run
EXIT_EXHAUSTED = 3
_VERIFY_EPILOG = (
    "Exit codes: 0 every check passed; 1 a check failed; 2 bad input (nothing is run); "
    "3 no check failed, but a check ran out of memory or time, or was not run (--timeout)."
)

#: what ``generate --layer`` accepts: every registered layer kind
LAYER_CHOICES = _LayerKindNames()
DEFAULT_LAYER = "linear"

# --help is plain text: no reStructuredText markup from docstrings.
_DESCRIPTION = (
    "Derive the complete basis of equivariant layers for the weight space of a neural network, "
    "write PyTorch modules for them, and verify them."
)
_EPILOG = "Run 'nfn-derive COMMAND --help' for the options of a command."


def version() -> str:
    """The installed version of nfn-derive (the ``derive`` package's own if not installed)."""
    try:
        return importlib.metadata.version("nfn-derive")
    except importlib.metadata.PackageNotFoundError:
        import derive

        return str(getattr(derive, "__version__", "unknown"))


def _default_example() -> MLPSpec:
    """The built-in example of ``nfn-derive demo``: a ReLU MLP on 28x28 images (built on use:
    building it imports torch, which ``--help`` and ``--version`` do not need)."""
    from derive.frontend.spec import mlp_spec

    return mlp_spec((784, 64, 64, 10), "relu", name="relu_mlp", source="built-in example")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"nfn-derive: error: {message}\n")


def _add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", help="architecture spec file (.yaml, .yml or .json)")
    parser.add_argument(
        "--mlp", metavar="WIDTHS", help="MLP widths, e.g. 784,64,64,10 (instead of a spec file)"
    )
    parser.add_argument(
        "--torch",
        metavar="MODULE:ATTR",
        help="a PyTorch nn.Module (or a factory returning one) to trace, e.g. "
        "nfn_runtime.architectures:small_cnn",
    )
    parser.add_argument(
        "--input-shape",
        metavar="SHAPE",
        help="with --torch: one input without the batch axis, e.g. 1,28,28",
    )
    parser.add_argument(
        "--activation",
        metavar="NAME[,NAME...]",
        help="activation of every hidden layer, or a comma list with one per hidden layer (default relu)",
    )
    parser.add_argument(
        "--permute", choices=PERMUTE_CHOICES, help="hidden: HNP setting; all: NP setting"
    )
    parser.add_argument(
        "--scaling", choices=SCALING_CHOICES, help="override the scaling of every hidden space"
    )
    parser.add_argument("--name", help="name of the weight space (used for class names)")


def _add_polynomial_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--degree", type=int, help="polynomial layers: largest degree of a term")
    parser.add_argument(
        "--family", choices=("magep", "complete"), default="magep", help="polynomial terms to use"
    )
    parser.add_argument(
        "--fixed-psi",
        action="store_true",
        help="keep the gluing parameters Psi fixed (as in MAGEP's code)",
    )
    parser.add_argument(
        "--max-terms",
        type=int,
        default=2000,
        help="refuse more complete polynomial terms than this",
    )
    parser.add_argument(
        "--max-params",
        type=int,
        default=1_000_000,
        help="refuse complete polynomial terms with more parameters per channel pair than this",
    )


def _add_budget_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--budget",
        metavar="DIM",
        default="default",
        help="largest linear-layer dimension per channel pair: larger maps over fixed axes are "
        "factored at low rank (still exactly equivariant); 'dense' keeps the complete basis; "
        "default: the network's parameter count / 64",
    )


def _budget(args: argparse.Namespace) -> Budget:
    from derive.plan.budget import parse_budget

    return parse_budget(str(args.budget))


def _check_polynomial_options(args: argparse.Namespace) -> None:
    if args.degree is not None and args.degree < 1:
        raise SpecError(f"--degree must be a positive integer, got {args.degree}", "arguments")
    if args.max_terms < 1:
        raise SpecError(
            f"--max-terms must be a positive integer, got {args.max_terms}", "arguments"
        )


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The parser with every command, and each command's handler."""
    parser = _Parser(prog="nfn-derive", description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"nfn-derive {version()}")
    commands = parser.add_subparsers(
        dest="command", title="commands", metavar="COMMAND", parser_class=_Parser
    )
    inspect = commands.add_parser(
        "inspect", help="print the group, the weight space and the sharing patterns"
    )
    _add_spec_arguments(inspect)
    inspect.add_argument("--latex", action="store_true", help="print formulas as LaTeX")
    inspect.add_argument(
        "--json",
        action="store_true",
        help="print a machine-readable JSON report (with --latex: each map also has a LaTeX formula)",
    )
    inspect.add_argument(
        "--degree",
        type=int,
        help="also list polynomial terms up to this degree (MAGEP and complete)",
    )
    inspect.add_argument(
        "--max-terms", type=int, default=2000, help="list at most this many complete terms"
    )
    _add_budget_argument(inspect)
    generate = commands.add_parser("generate", help="write a PyTorch module for one layer")
    _add_spec_arguments(generate)
    generate.add_argument(
        "--layer",
        choices=LAYER_CHOICES,
        default=DEFAULT_LAYER,
        metavar="KIND",
        help="layer to generate: %(choices)s (default %(default)s)",
    )
    generate.add_argument("-o", "--output", required=True, help="output .py file")
    _add_polynomial_arguments(generate)
    _add_budget_argument(generate)
    verify = commands.add_parser(
        "verify",
        help="run symbolic, numeric, sensitivity and completeness checks",
        description="Run the symbolic proofs, the group check on the network itself and every "
        "layer kind's checks, printing each check's line as it finishes.",
        epilog=_VERIFY_EPILOG,
    )
    _add_spec_arguments(verify)
    verify.add_argument("--samples", type=int, default=3, help="group elements per numeric check")
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument(
        "--only",
        metavar="CHECKS",
        help="run only these groups of checks, comma separated: symbolic, network, or a layer "
        "kind (linear, invariant, polynomial, polynomial-invariant); e.g. --only network",
    )
    verify.add_argument(
        "--memory",
        metavar="GB",
        type=float,
        default=DEFAULT_MEMORY_GB,
        help="memory budget in GiB for the whole process (default %(default)g): checks whose "
        "full setting needs more run on a smaller batch, fewer channels or a proxy with the same "
        "group (their lines say so); an allocation past it fails that check only",
    )
    verify.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        help="bound the run to this many seconds (counted from the start): a check still "
        "running then fails as out of time, checks not started get SKIP lines",
    )
    _add_polynomial_arguments(verify)
    _add_budget_argument(verify)
    demo = commands.add_parser(
        "demo", help="derive, generate and verify the built-in example (a ReLU MLP)"
    )
    demo.add_argument(
        "-o", "--output-dir", default="nfn_demo", help="folder for the generated modules"
    )
    handlers: dict[str, Handler] = {
        "inspect": _inspect,
        "generate": _generate,
        "verify": _verify,
        "demo": _demo,
    }
    _add_plugin_commands(commands, handlers)
    return parser, handlers


def _add_plugin_commands(commands: Any, handlers: dict[str, Handler]) -> None:
    """Add the commands of every entry point in :data:`COMMAND_GROUP` (in name order).

    A plug-in that fails to load or register is skipped with a one-line warning, so a broken
    plug-in never takes the built-in commands down with it.
    """
    entry_points = sorted(
        importlib.metadata.entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name
    )
    for entry_point in entry_points:
        try:
            added = entry_point.load()(commands)
            if not isinstance(added, dict) or not all(
                isinstance(name, str) and callable(handler) for name, handler in added.items()
            ):
                raise TypeError("register() must return a dict of command name -> handler")
            taken = sorted(set(added) & set(handlers))
            if taken:
                raise ValueError(f"command {taken[0]!r} exists already")
        except Exception as exc:
            sys.stderr.write(
                f"nfn-derive: warning: skipping the commands of entry point {entry_point.name!r} "
                f"({entry_point.value}): {type(exc).__name__}: {exc}\n"
            )
            continue
        handlers.update(added)


def _check_widths_text(text: str) -> None:
    """Reject ``--mlp`` text that is not a comma list of integers, naming the entry at fault.

    ``784x64x10`` or ``784-64-10`` is one entry, ``widths[0]``; the message then shows the comma
    list that was probably meant. Values (zero, negative) are checked later, with the spec.
    """
    for index, part in enumerate(text.split(",")):
        entry = part.strip()
        if re.fullmatch(r"[+-]?[0-9]+", entry):
            continue
        hint = ""
        if "," not in text and re.fullmatch(r"[0-9]+([^0-9,.]+[0-9]+)+", entry):
            hint = f" (separate widths with commas, e.g. {','.join(re.findall('[0-9]+', entry))})"
        raise SpecError(f"widths[{index}] must be a positive integer, got {entry!r}{hint}", "--mlp")


def _spec_from_args(args: argparse.Namespace) -> ArchitectureSpec:
    given = [
        flag
        for flag, value in (
            ("a spec file", args.spec),
            ("--mlp", args.mlp),
            ("--torch", args.torch),
        )
        if value
    ]
    if len(given) > 1:
        raise SpecError(f"give one architecture, not {' and '.join(given)}", "arguments")
    if args.input_shape is not None and not args.torch:
        raise SpecError("--input-shape applies to --torch only", "arguments")
    if args.torch:
        if args.activation is not None:
            raise SpecError(
                "--activation applies to --mlp; a traced module has its own", "arguments"
            )
        if args.input_shape is None:
            raise SpecError(
                "--torch needs --input-shape (one input without the batch axis)", "arguments"
            )
        from derive.frontend.torch_spec import parse_input_shape, torch_spec

        return torch_spec(
            args.torch,
            parse_input_shape(args.input_shape),
            permute=args.permute or "hidden",
            scaling=args.scaling or "auto",
            name=args.name,
            source="--torch",
        )
    if args.spec:
        if args.activation is not None:
            raise SpecError(
                "--activation applies to --mlp; set 'activation' in the spec file", "arguments"
            )
        from derive.frontend.spec import check_name, load_spec

        spec = load_spec(args.spec)
        overrides = {
            k: getattr(args, k)
            for k in ("permute", "scaling", "name")
            if getattr(args, k) is not None
        }
        if "name" in overrides:
            check_name(overrides["name"], "--name")
        if overrides:
            from dataclasses import replace

            spec = replace(spec, **overrides)
        return spec
    if args.mlp:
        from derive.frontend.spec import mlp_spec, parse_activations, parse_widths

        _check_widths_text(args.mlp)
        widths = parse_widths(args.mlp)
        activation = parse_activations(args.activation) if args.activation is not None else "relu"
        return mlp_spec(
            widths,
            activation,
            permute=args.permute or "hidden",
            scaling=args.scaling or "auto",
            name=args.name,
            source="--mlp",
        )
    raise SpecError(
        "no architecture given: pass a spec file, --mlp WIDTHS or --torch MODULE:ATTR", "arguments"
    )


def _inspect(args: argparse.Namespace) -> int:
    from derive.cli.report import report_json, report_table
    from derive.pipeline import derive

    _check_polynomial_options(args)
    budget = _budget(args)
    derivation = derive(_spec_from_args(args))
    if args.degree is not None:
        from derive.cli.poly_report import polynomial_json, polynomial_table

        if args.json:
            import json

            payload = json.loads(report_json(derivation, latex=args.latex, budget=budget))
            payload["polynomial"] = polynomial_json(
                derivation, args.degree, args.max_terms, args.latex
            )
            sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        else:
            sys.stdout.write(report_table(derivation, latex=args.latex, budget=budget))
            sys.stdout.write(polynomial_table(derivation, args.degree, args.max_terms, args.latex))
        return 0
    text = (
        report_json(derivation, latex=args.latex, budget=budget) + "\n"
        if args.json
        else report_table(derivation, latex=args.latex, budget=budget)
    )
    sys.stdout.write(text)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from derive.codegen.emit import write_atomic
    from derive.pipeline import derive, generate

    spec = _spec_from_args(args)
    output = Path(args.output)
    if output.suffix != ".py":
        raise SpecError(f"output file must end in .py, got {output.name!r}", "-o")
    if not output.parent.is_dir():
        raise SpecError(f"output folder {str(output.parent)!r} does not exist", "-o")
    if output.is_dir():
        raise SpecError(f"output path {str(output)!r} is a folder, not a file", "-o")
    _check_polynomial_options(args)
    budget = _budget(args)
    source = generate(
        derive(spec),
        args.layer,
        family=args.family,
        degree=args.degree,
        trainable_psi=not args.fixed_psi,
        max_terms=args.max_terms,
        max_params=args.max_params,
        budget=budget,
    )
    write_atomic(output, source)
    print(f"wrote {output} ({args.layer} layer for {spec.name}, {len(source.splitlines())} lines)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from derive.pipeline import checked_groups, derive, verify
    from derive.verify.checklist import line_writer

    start = time.monotonic()
    only = None
    if args.only is not None:  # checked before anything is derived or printed
        only = [part.strip() for part in args.only.split(",") if part.strip()]
        checked_groups(only)
    spec = _spec_from_args(args)
    if args.samples < 1:
        raise SpecError(f"--samples must be at least 1, got {args.samples}", "arguments")
    if not args.memory > 0:
        raise SpecError(
            f"--memory must be a positive number of GB, got {args.memory:g}", "arguments"
        )
    if args.timeout is not None and not args.timeout > 0:
        raise SpecError(
            f"--timeout must be a positive number of seconds, got {args.timeout:g}", "arguments"
        )
    _check_polynomial_options(args)
    budget = _budget(args)
    derivation = derive(spec)  # bad input is reported here, before anything is printed
    from derive.layers.linear import budget_choice

    budget_choice(derivation, budget)  # likewise a budget below the floor
    print(f"Verifying the generated layers of {spec.name} ({spec.summary()})", flush=True)
    report = verify(
        derivation,
        samples=args.samples,
        seed=args.seed,
        degree=args.degree,
        family=args.family,
        only=only,
        budget=budget,
        memory=args.memory,
        timeout=None if args.timeout is None else args.timeout - (time.monotonic() - start),
        sink=line_writer(sys.stdout),
    )
    sys.stdout.write(f"\n{report.verdict()}\n")
    return report.exit_code


def _demo(args: argparse.Namespace) -> int:
    from derive.codegen.emit import write_atomic
    from derive.pipeline import derive, generate, verify

    spec = _default_example()
    start = time.perf_counter()
    derivation = derive(spec)
    basis = derivation.basis
    elapsed = time.perf_counter() - start
    print(f"Built-in example {spec.name}: MLP {'-'.join(map(str, spec.widths))}, ReLU, HNP setting")
    for space in derivation.space.spaces:
        kind = "fixed" if space.is_fixed else f"permuted, {space.scaling.value} scaling"
        print(f"  space {space.name:>3} ({space.size}): {kind}")
    print(
        f"Complete equivariant linear basis: dimension {basis.dim} per channel pair, "
        f"{basis.num_maps} maps, {basis.constant_dim} constants (derived in {elapsed * 1000:.0f} ms)"
    )
    from derive.layers.linear import budget_choice

    choice = budget_choice(derivation, "default")
    print(
        f"Generated linear layer, default size budget: dimension {choice.dense_dim} -> "
        f"{choice.kept_dim} per channel pair"
    )
    for op in choice.factored:
        print(
            f"  {op.name} ({', '.join(op.writes)} <- {', '.join(op.reads)}): "
            f"{op.out_factor} x {op.in_factor} dense -> rank {op.rank} x max(c_in, c_out)"
        )
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for layer in ("linear", "invariant"):
        path = folder / f"{spec.name}_{layer}.py"
        write_atomic(path, generate(derivation, layer))
        print(f"wrote {path}")
    print(
        "Verifying (symbolic proofs, the network's own group, reference, equivariance, "
        "sensitivity, completeness):"
    )
    report = verify(derivation)
    sys.stdout.write(report.text())
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare ``nfn-derive``: what there is to run
        sys.stderr.write(parser.format_help())
        return 2
    handler = handlers.get(args.command)
    if handler is None:  # a plug-in added the command, then failed (warned about above)
        sys.stderr.write(f"nfn-derive: error: command {args.command!r} is not available\n")
        return 2
    try:
        return handler(args)
    except SpecError as exc:
        sys.stderr.write(f"nfn-derive: error: {exc}\n")
        return 2
    except GenerationError as exc:
        sys.stderr.write(f"nfn-derive: error: {exc}\n")
        return 2
    except (MemoryError, RuntimeError) as exc:  # outside verify's checks, which catch their own
        from derive.verify.limits import is_out_of_memory, out_of_memory_detail

        if not is_out_of_memory(exc):
            raise
        sys.stderr.write(f"nfn-derive: error: {args.command}: {out_of_memory_detail(exc)}\n")
        return EXIT_EXHAUSTED
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
