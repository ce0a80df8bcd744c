"""Write a variant of a SAM template for another instruction set architecture.

``make build-x86_64`` builds template.yaml for x86_64 (for ``sam local`` on x86 machines,
where the arm64 build runs under emulation) from the variant this script writes: the
repository keeps one template, and what deploys stays arm64.

The variant is the template's text with the value of every architecture key replaced: the
``Architectures`` of functions (in Globals or a resource's Properties), the
``CompatibleArchitectures`` of layers, and ``BuildArchitecture`` in a resource's Metadata
(which wheels sam build installs). Editing the text keeps comments and layout, so
``diff template.yaml VARIANT`` shows only those lines. A text edit can also touch something
else, or miss a value written another way (a block list, an intrinsic function), so the
variant is parsed and must equal the parsed template with exactly those values replaced;
otherwise nothing is written and the script exits non-zero, saying where they differ.

Usage: ``python infra/build/arch_variant.py --architecture x86_64 template.yaml OUT``
(with the project's environment: it reads templates with ``lambdaloop_local.template``).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lambdaloop_local.template import TemplateError, load_template

ARCHITECTURES = ("arm64", "x86_64")
#: Keys whose value is a list of architectures, in a Globals section or a resource's Properties.
LIST_KEYS = ("Architectures", "CompatibleArchitectures")
#: The key of a resource's Metadata that picks the architecture sam build installs wheels for.
BUILD_KEY = "BuildArchitecture"

# Flow lists and plain scalars only: anything else is left alone and the check below says so.
_LIST_LINE = re.compile(
    r"^(?P<head>[ \t]*(?:Architectures|CompatibleArchitectures):[ \t]*)\[[^\]\n]*\]", re.MULTILINE
)
_BUILD_LINE = re.compile(
    r"^(?P<head>[ \t]*BuildArchitecture:[ \t]*)[\"']?[\w-]+[\"']?", re.MULTILINE
)
_MAX_REPORTED = 10


class VariantError(Exception):
    """The variant would differ from the template in more than its architectures."""


def with_architecture(body: dict[str, Any], architecture: str) -> dict[str, Any]:
    """A copy of ``body`` (a parsed template) with every architecture value set to
    ``architecture``: what the variant must parse to."""
    result = copy.deepcopy(body)
    globals_ = result.get("Globals")
    sections = [s for s in globals_.values() if isinstance(s, dict)] if globals_ else []
    for resource in result["Resources"].values():
        if not isinstance(resource, dict):
            continue
        if isinstance(properties := resource.get("Properties"), dict):
            sections.append(properties)
        if isinstance(metadata := resource.get("Metadata"), dict) and BUILD_KEY in metadata:
            metadata[BUILD_KEY] = architecture
    for section in sections:
        for key in LIST_KEYS:
            if key in section:
                section[key] = [architecture]
    return result


def variant_text(text: str, architecture: str) -> str:
    """``text`` (a template) with the value of every architecture key replaced."""
    text = _LIST_LINE.sub(lambda match: f"{match['head']}[{architecture}]", text)
    return _BUILD_LINE.sub(lambda match: f"{match['head']}{architecture}", text)


def differences(expected: Any, actual: Any, path: str = "") -> Iterator[str]:
    """The paths (``/Resources/Name/...``) where two parsed templates differ."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(expected.keys() | actual.keys(), key=str):
            where = f"{path}/{key}"
            if key in expected and key in actual:
                yield from differences(expected[key], actual[key], where)
            else:
                yield where
    elif isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            yield from differences(left, right, f"{path}/{index}")
    elif expected != actual:
        yield path or "/"


def write_variant(source: Path, destination: Path, architecture: str) -> None:
    """Write the ``architecture`` variant of ``source`` to ``destination``, checked first."""
    text = source.read_text(encoding="utf-8")
    destination.parent.mkdir(parents=True, exist_ok=True)
    # load_template reads files; the variant goes to its final name only once it passed.
    partial = destination.with_name(f"{destination.name}.partial")
    partial.write_text(variant_text(text, architecture), encoding="utf-8")
    try:
        expected = with_architecture(load_template(source).body, architecture)
        found = list(differences(expected, load_template(partial).body))
        if found:
            listed = "\n  ".join(found[:_MAX_REPORTED])
            raise VariantError(
                f"the {architecture} variant of {source} is not the template with only its "
                f"architectures replaced; they differ at:\n  {listed}\n(write each as "
                "`Architectures: [arm64]` or `BuildArchitecture: arm64`, a literal on the key's "
                "line)"
            )
        partial.replace(destination)
    finally:
        partial.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--architecture", choices=ARCHITECTURES, required=True)
    parser.add_argument("source", type=Path, help="the template (template.yaml)")
    parser.add_argument("destination", type=Path, help="where the variant goes")
    args = parser.parse_args(argv)
    try:
        write_variant(args.source, args.destination, args.architecture)
    except (OSError, TemplateError, VariantError) as exc:
        sys.exit(f"arch_variant: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
