"""The operator's command: list the published model versions, and point `latest` back at one of them.

    python -m trainer.rollback list --export_dir work/model/export
    python -m trainer.rollback to --export_dir work/model/export --version 1764000000   # or: make rollback VERSION=...

`to` refuses a version that is incomplete (no model_info.json), whose model_info.json breaks the contract, whose
files do not all match their sha256, or that failed the promotion gate (unless --allow_unblessed). It moves `latest`
with the same compare-and-swap as publishing (GCS: a write conditioned on the generation read; locally: under the
export root's lock), so if a trainer publishes meanwhile nothing is overwritten and the command says so. It also
rewrites a `latest` of the old plain-text format in the current one, and replaces a damaged one. Exit status:
0 moved (or already there), 1 refused or lost the race, 2 usage.
"""

import argparse
import json
import sys

from trainer import model_contract, publish
from trainer.model_contract import MODEL_INFO, Pointer


def rollback(export_root: str, version: str, *, allow_unblessed: bool = False) -> publish.LatestMove:
    """Points `latest` at version after checking it is complete and intact; if `latest` moves while this runs,
    nothing is written (the result says so). Raises PublishError for a version that may not be used."""
    info, checksum = publish.check_version(export_root, version)
    if not allow_unblessed and not model_contract.is_blessed(info):
        reasons = "; ".join(info["promotion"].get("reasons", [])) or "no reason recorded"
        raise publish.PublishError(f"version {version} did not pass the promotion gate ({reasons}); pass "
                                   f"--allow_unblessed to point latest at it anyway")
    try:
        current = publish.read_latest(export_root)
    except publish.PublishError as error:  # the repair this command exists for
        print(f"replacing a damaged latest ({error})", file=sys.stderr)
        current = publish.DAMAGED
    return publish.move_latest(export_root, Pointer(version, checksum), expected=current)


def _summary(export_root: str, version: str) -> tuple[str, str, str, str]:
    """(created_at, model name, accuracy, promotion decision) for the listing, whatever state the version is in."""
    data = publish._read(model_contract.join(export_root, version, MODEL_INFO))
    if data is None:
        return "", "", "", "incomplete (no model_info.json)"
    try:
        info = json.loads(data)
    except ValueError:
        return "", "", "", "unreadable model_info.json"
    accuracy = (info.get("metrics") or {}).get("accuracy")
    decision = (info.get("promotion") or {}).get("decision", "published before the gate existed")
    return (str(info.get("created_at", "")), str(info.get("model_name", "")),
            "" if accuracy is None else f"{accuracy:.4f}", decision)


def list_versions(export_root: str) -> None:
    latest = publish.read_latest(export_root)
    print(f"{'version':>12}  {'created_at':20}  {'model':14}  {'accuracy':>8}  promotion")
    for version in publish.list_versions(export_root):
        created, name, accuracy, decision = _summary(export_root, version)
        marker = "   <- latest" if latest and latest.version == version else ""
        print(f"{version:>12}  {created:20}  {name:14}  {accuracy:>8}  {decision}{marker}")
    if latest is None:
        print("latest: nothing published yet")
    elif latest.legacy:
        print(f"latest is in the old plain-text format, which the scorer refuses; rewrite it: python -m "
              f"trainer.rollback to --export_dir {export_root} --version {latest.version}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.rollback", allow_abbrev=False,
                                     description="List the published model versions, or point `latest` at one.")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", allow_abbrev=False, help="the versions under an export root, and `latest`")
    listing.add_argument("--export_dir", required=True, help="export root (local path or gs://)")
    to = commands.add_parser("to", allow_abbrev=False, help="point `latest` at --version after verifying its files")
    to.add_argument("--export_dir", required=True, help="export root (local path or gs://)")
    to.add_argument("--version", required=True, help="the version `latest` should name")
    to.add_argument("--allow_unblessed", action="store_true", help="also accept a version that failed the gate")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            list_versions(args.export_dir)
            return 0
        move = rollback(args.export_dir, args.version, allow_unblessed=args.allow_unblessed)
    except publish.PublishError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not move.moved:
        print(f"error: latest not moved: {move.reason}. Check `python -m trainer.rollback list --export_dir "
              f"{args.export_dir}` and run the command again if it still applies", file=sys.stderr)
        return 1
    print(f"latest -> version {args.version} (model_info.json sha256 {move.latest.model_info_sha256})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
