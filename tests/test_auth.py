"""Token extraction and verification (pure: no server)."""

from __future__ import annotations

import time
import warnings

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from helpers import SECRET, make_token
from wsapp import auth
from wsapp.errors import HandshakeRejected
from wsapp.settings import Settings

SETTINGS = Settings(jwt_secret=SECRET)


def rejected(token: str, settings: Settings = SETTINGS) -> tuple[int, str]:
    with pytest.raises(HandshakeRejected) as info:
        auth.verify_token(token, settings)
    return info.value.status, info.value.code


def test_raw_token_as_subprotocol_is_selected_back() -> None:
    tok = make_token()
    found = auth.find_token({"Sec-WebSocket-Protocol": f"chat.v1, {tok}"}, {}, {})
    assert found == auth.FoundToken(tok, "subprotocol", tok)


def test_bearer_pair_as_subprotocols_selects_bearer() -> None:
    tok = make_token()
    found = auth.find_token({"Sec-WebSocket-Protocol": f"bearer, {tok}"}, {}, {})
    assert found == auth.FoundToken(tok, "subprotocol", "bearer")


def test_token_sources_in_order_first_match_wins() -> None:
    a, b, c, d = (make_token(x) for x in "abcd")
    headers = {"Sec-WebSocket-Protocol": a, "Authorization": f"Bearer {b}"}
    assert auth.find_token(headers, {"token": c}, {"access_token": d}).token == a  # type: ignore[union-attr]
    assert auth.find_token({"Authorization": f"Bearer {b}"}, {"token": c}, {"access_token": d}).source == "header"  # type: ignore[union-attr]
    assert auth.find_token({}, {"token": c}, {"access_token": d}) == auth.FoundToken(c, "query")
    assert auth.find_token({}, {}, {"access_token": d}) == auth.FoundToken(d, "cookie")
    assert auth.find_token({"Authorization": "Basic xyz"}, {}, {}) is None


def test_valid_token_gives_client_id_and_role() -> None:
    ident = auth.verify_token(make_token("bob", admin=True), SETTINGS)
    assert (ident.client_id, ident.is_admin) == ("bob", True)
    assert auth.verify_token(make_token("eve", role="admin"), SETTINGS).is_admin
    assert not auth.verify_token(make_token("eve", role="user"), SETTINGS).is_admin


def test_bad_signature_and_malformed_are_invalid_token() -> None:
    assert rejected(make_token(secret="another-secret-0123456789-0123456789")) == (401, "invalid_token")
    assert rejected("not.a.jwt") == (401, "invalid_token")
    assert rejected("garbage") == (401, "invalid_token")


def test_alg_none_is_refused() -> None:
    tok = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, key=None, algorithm="none")  # type: ignore[arg-type]
    assert rejected(tok) == (401, "invalid_token")


def test_algorithm_not_pinned_is_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyjwt warns that this secret is short for HS512
        tok = make_token(algorithm="HS512")
    assert rejected(tok) == (401, "invalid_token")


def test_expired_and_not_yet_valid() -> None:
    assert rejected(make_token(ttl=-60)) == (401, "token_expired")
    assert rejected(make_token(nbf=int(time.time()) + 600)) == (401, "token_not_yet_valid")


def test_small_leeway_accepts_clock_skew() -> None:
    assert auth.verify_token(make_token(ttl=-3), SETTINGS).client_id == "alice"


def test_exp_is_required() -> None:
    tok = jwt.encode({"sub": "x"}, SECRET, algorithm="HS256")
    assert rejected(tok) == (401, "invalid_token")


def test_issuer_and_audience_checked_when_configured() -> None:
    s = SETTINGS.replace(jwt_issuer="https://issuer", jwt_audience="wsapp")
    assert auth.verify_token(make_token(iss="https://issuer", aud="wsapp"), s).client_id == "alice"
    assert rejected(make_token(iss="https://other", aud="wsapp"), s) == (401, "invalid_token")
    assert rejected(make_token(iss="https://issuer", aud="other"), s) == (401, "invalid_token")
    assert rejected(make_token(), s) == (401, "invalid_token")


def test_client_id_claim_is_configurable_gin_vue_admin_style() -> None:
    s = SETTINGS.replace(jwt_client_id_claim="ID")
    tok = make_token(None, ID=42, Username="admin")
    assert auth.verify_token(tok, s).client_id == "42"
    assert rejected(make_token("alice"), s) == (401, "invalid_token")  # no ID claim


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_rs256_and_es256_with_public_key_and_no_hs_confusion() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    s = Settings(jwt_public_key=_pem(rsa_key), jwt_algorithms=("RS256", "ES256"))
    tok = jwt.encode({"sub": "r", "exp": int(time.time()) + 60}, rsa_key, algorithm="RS256")
    assert auth.verify_token(tok, s).client_id == "r"
    # the classic confusion: an HS256 token signed with the public key as secret
    forged = jwt.encode({"sub": "r", "exp": int(time.time()) + 60}, "x" * 40, algorithm="HS256")
    assert rejected(forged, s) == (401, "invalid_token")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    s2 = Settings(jwt_public_key=_pem(ec_key), jwt_algorithms=("ES256",))
    tok2 = jwt.encode({"sub": "e", "exp": int(time.time()) + 60}, ec_key, algorithm="ES256")
    assert auth.verify_token(tok2, s2).client_id == "e"


def test_minted_token_verifies() -> None:
    ident = auth.verify_token(auth.mint_token(SETTINGS, "carol", admin=True, ttl_s=60), SETTINGS)
    assert (ident.client_id, ident.is_admin) == ("carol", True)
    assert ident.expires_at - time.time() == pytest.approx(60, abs=2)
