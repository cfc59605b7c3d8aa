"""``nfn-derive``: inspect, generate and verify equivariant layers for an architecture.

Bad input never shows a traceback: the message names what is wrong and where, and the exit
code is 2. No output file is written unless generation succeeds completely.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from derive.errors import GenerationError, SpecError
from derive.frontend.spec import (
    PERMUTE_CHOICES,
    SCALING_CHOICES,
    ArchitectureSpec,
    MLPSpec,
    check_name,
    load_spec,
    mlp_spec,
    parse_activations,
    parse_widths,
)

__all__ = ["main", "DEFAULT_EXAMPLE"]

#: the built-in example of ``nfn-derive demo``: a ReLU MLP on 28x28 images
DEFAULT_EXAMPLE = mlp_spec((784, 64, 64, 10), "relu", name="relu_mlp", source="built-in example")


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


def _check_polynomial_options(args: argparse.Namespace) -> None:
    if args.degree is not None and args.degree < 1:
        raise SpecError(f"--degree must be a positive integer, got {args.degree}", "arguments")
    if args.max_terms < 1:
        raise SpecError(
            f"--max-terms must be a positive integer, got {args.max_terms}", "arguments"
        )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nfn-derive", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    inspect = commands.add_parser(
        "inspect", help="print the group, the weight space and the sharing patterns"
    )
    _add_spec_arguments(inspect)
    inspect.add_argument("--latex", action="store_true", help="print formulas as LaTeX")
    inspect.add_argument("--json", action="store_true", help="print a machine-readable JSON report")
    inspect.add_argument(
        "--degree",
        type=int,
        help="also list polynomial terms up to this degree (MAGEP and complete)",
    )
    inspect.add_argument(
        "--max-terms", type=int, default=2000, help="list at most this many complete terms"
    )
    generate = commands.add_parser("generate", help="write a PyTorch module for one layer")
    _add_spec_arguments(generate)
    generate.add_argument(
        "--layer",
        choices=("linear", "invariant", "polynomial", "polynomial-invariant"),
        default="linear",
    )
    generate.add_argument("-o", "--output", required=True, help="output .py file")
    _add_polynomial_arguments(generate)
    verify = commands.add_parser(
        "verify", help="run symbolic, numeric, sensitivity and completeness checks"
    )
    _add_spec_arguments(verify)
    verify.add_argument("--samples", type=int, default=3, help="group elements per numeric check")
    verify.add_argument("--seed", type=int, default=0)
    _add_polynomial_arguments(verify)
    demo = commands.add_parser(
        "demo", help="derive, generate and verify the built-in example (a ReLU MLP)"
    )
    demo.add_argument(
        "-o", "--output-dir", default="nfn_demo", help="folder for the generated modules"
    )
    from nfn_tasks.commands import add_task_commands

    add_task_commands(commands)
    return parser


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
    from derive.pipeline import derive
    from derive.cli.report import report_json, report_table

    _check_polynomial_options(args)
    derivation = derive(_spec_from_args(args))
    if args.degree is not None:
        from derive.cli.poly_report import polynomial_json, polynomial_table

        if args.json:
            import json

            payload = json.loads(report_json(derivation, latex=args.latex))
            payload["polynomial"] = polynomial_json(
                derivation, args.degree, args.max_terms, args.latex
            )
            sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        else:
            sys.stdout.write(report_table(derivation, latex=args.latex))
            sys.stdout.write(polynomial_table(derivation, args.degree, args.max_terms, args.latex))
        return 0
    text = (
        report_json(derivation, latex=args.latex) + "\n"
        if args.json
        else report_table(derivation, latex=args.latex)
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
    source = generate(
        derive(spec),
        args.layer,
        family=args.family,
        degree=args.degree,
        trainable_psi=not args.fixed_psi,
        max_terms=args.max_terms,
        max_params=args.max_params,
    )
    write_atomic(output, source)
    print(f"wrote {output} ({args.layer} layer for {spec.name}, {len(source.splitlines())} lines)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from derive.pipeline import derive
    from derive.verify.runner import verify

    spec = _spec_from_args(args)
    if args.samples < 1:
        raise SpecError(f"--samples must be at least 1, got {args.samples}", "arguments")
    _check_polynomial_options(args)
    derivation = derive(spec)  # bad input is reported here, before anything is printed
    what = "-".join(map(str, spec.widths)) if isinstance(spec, MLPSpec) else spec.summary()
    print(f"Verifying the generated layers of {spec.name} ({what})")
    report = verify(
        derivation, samples=args.samples, seed=args.seed, degree=args.degree, family=args.family
    )
    sys.stdout.write(report.text())
    return 0 if report.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from derive.codegen.emit import write_atomic
    from derive.pipeline import derive, generate
    from derive.verify.runner import verify

    spec = DEFAULT_EXAMPLE
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
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for layer in ("linear", "invariant"):
        path = folder / f"{spec.name}_{layer}.py"
        write_atomic(path, generate(derivation, layer))
        print(f"wrote {path}")
    print("Verifying (symbolic proofs, reference, equivariance, sensitivity, completeness):")
    report = verify(spec)
    sys.stdout.write(report.text())
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    from nfn_tasks.commands import TASK_COMMANDS

    handlers = {"inspect": _inspect, "generate": _generate, "verify": _verify, "demo": _demo}
    handlers.update(TASK_COMMANDS)
    try:
        return handlers[args.command](args)
    except SpecError as exc:
        sys.stderr.write(f"nfn-derive: error: {exc}\n")
        return 2
    except GenerationError as exc:
        sys.stderr.write(f"nfn-derive: error: {exc}\n")
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
