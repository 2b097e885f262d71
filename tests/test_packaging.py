"""The installed package carries the shipped policy and de-identification profiles."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_built_wheel_holds_the_policy_profiles_and_examples(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("carelink-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        shipped = z.read("carelink/consent_files/policy.json")
    assert shipped == (ROOT / "consent" / "policy.json").read_bytes()
    for profile in ("pseudonymised", "anonymised"):
        assert f"carelink/consent_files/deid/{profile}.json" in names
    examples = {n for n in names if n.startswith("carelink/consent_files/examples/")}
    assert len(examples) == len(list((ROOT / "consent" / "examples").glob("*.json")))
    assert "carelink/fhir/r4_types.json" in names
    profiles = {n for n in names if n.startswith("carelink/profile_files/")}
    assert "carelink/profile_files/UKCore-Patient.json" in profiles
    assert len(profiles) == len(list((ROOT / "profiles").glob("*"))) > 20
