#!/usr/bin/env python3
"""Mint the HS256 tokens for bench/run.sh (Python standard library only).

Usage: mint_token.py --key-file F --iss ISS --aud AUD --kid KID --sub SUB --out DIR

Writes one file per token into DIR (the token on one line, no newline):

  small.jwt      valid, ~427 characters (typical access token: iss aud sub iat exp jti scope email)
  big.jwt        valid, ~2,400 characters (the same claims plus groups, permissions, profile)
  bad_sig.jwt    small token's claims signed with another key
  tampered.jwt   small token with its payload changed after signing
  expired.jwt    exp one hour in the past
  wrong_aud.jwt  aud is another service
  wrong_iss.jwt  iss is another issuer
  no_exp.jwt     no exp claim at all
  alg_none.jwt   header alg "none", empty signature (same kid)
  garbage.jwt    not a JWT

and prints a short JSON summary (lengths) on stdout.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def compact(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()


def sign(header: dict, claims: dict, key: bytes) -> str:
    signing_input = b64u(compact(header)) + "." + b64u(compact(claims))
    mac = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + b64u(mac)


def fill_to(header: dict, claims: dict, key: bytes, target: int, field: str) -> dict:
    """Grow claims[field] (a string) until the signed token is as close to `target` chars as possible."""
    best = dict(claims)
    for n in range(0, 4 * target):
        c = dict(claims)
        c[field] = ("x" * n)
        if len(sign(header, c, key)) > target:
            break
        best = c
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--key-file", required=True, help="file holding the raw HMAC key bytes")
    ap.add_argument("--iss", required=True)
    ap.add_argument("--aud", required=True)
    ap.add_argument("--kid", required=True)
    ap.add_argument("--sub", required=True)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--small", type=int, default=427, help="target length of small.jwt")
    ap.add_argument("--big", type=int, default=2400, help="target length of big.jwt")
    a = ap.parse_args()

    with open(a.key_file, "rb") as f:
        key = f.read()
    if len(key) < 32:
        sys.exit("mint_token.py: key must be at least 32 bytes")

    now = int(time.time())
    hdr = {"alg": "HS256", "typ": "JWT", "kid": a.kid}
    base = {
        "iss": a.iss,
        "aud": a.aud,
        "sub": a.sub,
        "iat": now,
        "exp": now + 30 * 24 * 3600,  # valid for the whole run, whatever its length
        "jti": hashlib.sha256(f"bench-{now}".encode()).hexdigest()[:16],
        "scope": "read write",
        "email": "bench.user@example.com",
    }
    small = fill_to(hdr, base, key, a.small, "pad")

    extra = dict(base)
    extra["name"] = "Bench User"
    extra["preferred_username"] = "bench.user"
    extra["groups"] = [f"team-{i:02d}" for i in range(40)]
    extra["permissions"] = [f"svc-{i:02d}:{op}" for i in range(30) for op in ("read", "write")]
    extra["tenant"] = {"id": "5f0c2a8e-6f1d-4c4e-9d73-0a2f8b1e7c11", "region": "eu-west-1", "plan": "enterprise"}
    big = fill_to(hdr, extra, key, a.big, "pad")

    other_key = hashlib.sha256(b"not-the-key" + key).digest()
    tok = {
        "small": sign(hdr, small, key),
        "big": sign(hdr, big, key),
        "bad_sig": sign(hdr, small, other_key),
        "expired": sign(hdr, dict(small, iat=now - 7200, exp=now - 3600), key),
        "wrong_aud": sign(hdr, dict(small, aud="some-other-service"), key),
        "wrong_iss": sign(hdr, dict(small, iss="https://issuer.invalid"), key),
        "no_exp": sign(hdr, {k: v for k, v in small.items() if k != "exp"}, key),
        "garbage": "this-is.not-a.jwt",
    }
    h, _, s = tok["small"].split(".")
    tok["tampered"] = h + "." + b64u(compact(dict(small, sub="admin"))) + "." + s
    tok["alg_none"] = b64u(compact({"alg": "none", "typ": "JWT", "kid": a.kid})) + "." + b64u(compact(small)) + "."

    os.makedirs(a.out, exist_ok=True)
    for name, t in tok.items():
        with open(os.path.join(a.out, name + ".jwt"), "w") as f:
            f.write(t)
    json.dump({name: len(t) for name, t in tok.items()}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
