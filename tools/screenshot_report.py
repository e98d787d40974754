"""Render a report.html (or compare.html) in headless Chromium and save a PNG screenshot.

Examples:
  python tools/screenshot_report.py out/report.html out/report.png
  python tools/screenshot_report.py out/report.html docs/images/report_html.png --size 1400,2000

Chromium (Debian package ``chromium``) loads the file itself from disk: what the PNG shows is
what a browser shows, plots and gallery included, without a server. It runs without a sandbox
(--no-sandbox), as it must when started as root in a container.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from resnet_det.cli import main_guard
from resnet_det.errors import EvaluationError

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str:
    """The first headless-capable browser on PATH, or an error naming the package to install."""
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    raise EvaluationError("no chromium on PATH: install it (Debian: apt-get install -y chromium) to take screenshots")


def screenshot(page: Path, output: Path, size=(1400, 2000), timeout: float = 120.0) -> Path:
    """``output`` (PNG) of ``page`` rendered at ``size`` (width, height) pixels."""
    page = Path(page).resolve()
    if not page.is_file():
        raise EvaluationError(f"{page}: no such page to screenshot")
    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = [
            find_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--screenshot={output}", f"--window-size={size[0]},{size[1]}",
            page.as_uri(),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not output.is_file():
        raise EvaluationError(f"chromium could not render {page}: {done.stderr.strip().splitlines()[-1:]}")
    return output


@main_guard
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("page", help="report.html or compare.html")
    parser.add_argument("output", help="the PNG to write")
    parser.add_argument("--size", default="1400,2000", help="window WIDTH,HEIGHT in pixels (default 1400,2000)")
    args = parser.parse_args(argv)
    try:
        size = tuple(int(v) for v in args.size.split(","))
        assert len(size) == 2 and min(size) > 0
    except (ValueError, AssertionError):
        parser.error(f"--size {args.size!r}: give WIDTH,HEIGHT, e.g. 1400,2000")
    print(screenshot(Path(args.page), Path(args.output), size), file=sys.stdout)


if __name__ == "__main__":
    main()
