"""Validates FHIR Bundles with an independent library: the fhir.resources R4B models.

Reads a JSON array of Bundles on standard input and parses each with the models, which refuse an element
FHIR does not define, a missing required element and a value of the wrong type. Prints one line per
refused Bundle (its index and the library's message) and exits 1 if any was refused, 0 otherwise.

The models do not check code bindings or profiles; the tests check the rules the PHD implementation guide
adds (profiles, identifiers, codes) themselves.
"""

import json
import sys

from fhir.resources.R4B.bundle import Bundle


def main() -> int:
    bundles = json.load(sys.stdin)
    refused = 0
    for index, bundle in enumerate(bundles):
        try:
            Bundle.parse_obj(bundle)
        except Exception as error:  # The library raises its own validation error types.
            refused += 1
            message = " | ".join(str(error).splitlines())
            print(f"bundle {index}: {message}")
    print(f"{len(bundles) - refused} of {len(bundles)} bundles valid")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
