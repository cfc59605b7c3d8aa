"""``inspect --degree D``: the polynomial terms of both families, as a table or JSON.

Lists every MAGEP term of degree 2..D (formula, degrees, parameters, family) and the complete
family of degree 2..D: counts per degree always (computed without materializing, so they are
reported even where the count explodes), every term when there are at most ``max_terms``, and
which complete terms the MAGEP family lacks.
"""

from __future__ import annotations

from typing import Any

from derive.basis.magep import MagepTerm, magep_terms
from derive.basis.magep_diagrams import magep_coverage, term_diagrams
from derive.basis.poly_formulas import poly_formula_latex, poly_formula_text
from derive.basis.polynomial import PolyMap, count_polynomial, enumerate_polynomial
from derive.derivation import Derivation
from derive.errors import GenerationError

__all__ = ["polynomial_data", "polynomial_json", "polynomial_table"]


def _magep_entry(derivation: Derivation, term: MagepTerm, latex: bool) -> dict[str, Any]:
    diagrams = term_diagrams(derivation.space, term)
    entry: dict[str, Any] = {
        "family": "magep",
        "output": term.output,
        "degree": term.degree,
        "degrees": list(term.degrees),
        "formula": f"{term.output}' <- {term.formula}",
        "monomials": [poly_formula_text(derivation.space, d) for d in diagrams],
        "params": diagrams[0].num_params,
        "psi": [{"name": p.name, "shape": ["in_channels", *p.shape]} for p in term.psi],
    }
    if latex:
        entry["latex"] = [poly_formula_latex(derivation.space, d) for d in diagrams]
    return entry


def _complete_entry(
    derivation: Derivation, m: PolyMap, in_magep: bool, latex: bool
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "family": "complete",
        "output": m.output if m.output is not None else "inv",
        "degree": m.degree,
        "formula": poly_formula_text(derivation.space, m),
        "params": m.num_params,
        "in_magep": in_magep,
    }
    if latex:
        entry["latex"] = poly_formula_latex(derivation.space, m)
    return entry


def polynomial_data(
    derivation: Derivation, degree: int, max_terms: int, latex: bool = False
) -> dict[str, Any]:
    """The polynomial report (see the module docstring)."""
    space = derivation.space
    data: dict[str, Any] = {"degree": degree, "terms": []}
    try:
        magep = magep_terms(space, degree)
        data["families"] = {"magep": {"applicable": True, "count": len(magep)}}
    except GenerationError as exc:
        magep = []
        data["families"] = {"magep": {"applicable": False, "reason": str(exc), "count": 0}}
    data["terms"] += [_magep_entry(derivation, t, latex) for t in magep]
    by_degree: dict[str, dict[str, int]] = {}
    total = 0
    for d in range(2, degree + 1):
        counts = count_polynomial(space, d)
        terms = sum(c[0] for c in counts.values())
        by_degree[str(d)] = {"terms": terms, "dimension": sum(c[1] for c in counts.values())}
        total += terms
    complete: dict[str, Any] = {
        "count": total,
        "by_degree": by_degree,
        "listed": total <= max_terms,
    }
    data["families"]["complete"] = complete
    if total <= max_terms:
        maps = [
            m
            for d in range(2, degree + 1)
            for block in enumerate_polynomial(space, d, limit=None).blocks
            for m in block.maps
        ]
        covered, lacking = magep_coverage(space, magep, maps)
        covered_ids = {id(m) for m in covered}
        data["terms"] += [_complete_entry(derivation, m, id(m) in covered_ids, latex) for m in maps]
        data["magep_lacks"] = {
            "count": len(lacking),
            "terms": [poly_formula_text(space, m) for m in lacking],
        }
    else:
        complete["reason"] = (
            f"{total} complete terms exceed --max-terms {max_terms}; counts only (raise --max-terms to list them)"
        )
    data["count"] = len(data["terms"])
    return data


def polynomial_json(
    derivation: Derivation, degree: int, max_terms: int, latex: bool = False
) -> dict[str, Any]:
    return polynomial_data(derivation, degree, max_terms, latex)


def polynomial_table(
    derivation: Derivation, degree: int, max_terms: int, latex: bool = False
) -> str:
    data = polynomial_data(derivation, degree, max_terms, latex)
    families = data["families"]
    lines = ["", f"Polynomial terms of degree 2..{degree}"]
    if families["magep"]["applicable"]:
        lines.append(f"  MAGEP family: {families['magep']['count']} terms")
    else:
        lines.append(f"  MAGEP family: not applicable ({families['magep']['reason']})")
    complete = families["complete"]
    per_degree = ", ".join(
        f"degree {d}: {c['terms']} terms, dimension {c['dimension']}"
        for d, c in complete["by_degree"].items()
    )
    lines.append(f"  complete family: {complete['count']} terms ({per_degree})")
    if "magep_lacks" in data:
        lines.append(f"  complete terms the MAGEP family lacks: {data['magep_lacks']['count']}")
    if not complete["listed"]:
        lines.append(f"  {complete['reason']}")
    rows = [["family", "output", "degree", "params", "formula"]]
    for term in data["terms"]:
        formula = term.get("latex") if latex else term["formula"]
        if isinstance(formula, list):
            formula = " + ".join(formula)
        family = term["family"] + (" (in MAGEP)" if term.get("in_magep") else "")
        degrees = ",".join(str(d) for d in term.get("degrees", [term["degree"]]))
        rows.append([family, term["output"], degrees, str(term["params"]), formula])
    if len(rows) > 1:
        widths = [max(len(r[k]) for r in rows) for k in range(4)]
        for row in rows:
            lines.append(
                (
                    "  " + "  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4]
                ).rstrip()
            )
    return "\n".join(lines) + "\n"
