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


# (claims, admin?): the contract's admin is "admin" in the `roles` list or `role` == "admin"
ROLES = [
    ({"roles": ["admin"]}, True),
    ({"roles": ["user", "admin"]}, True),
    ({"roles": ["admin", "user"]}, True),
    ({"roles": [1, None, {"x": 1}, "admin"]}, True),
    ({"role": "admin"}, True),
    ({"roles": ["user"], "role": "admin"}, True),
    ({"roles": ["admin"], "role": "user"}, True),
    ({"roles": ["user"]}, False),  # a non-empty list is not enough
    ({"roles": ["user", "editor"]}, False),
    ({"roles": []}, False),
    ({"roles": ["Admin"]}, False),  # exact, case-sensitive
    ({"roles": ["ADMIN"]}, False),
    ({"roles": [" admin"]}, False),
    ({"roles": ["admin "]}, False),
    ({"roles": ["administrator"]}, False),
    ({"roles": ["admins"]}, False),
    ({"roles": [["admin"]]}, False),  # nested
    ({"roles": [{"admin": True}]}, False),
    ({"roles": "admin"}, False),  # a string, not a list
    ({"roles": "administrator"}, False),
    ({"roles": {"admin": True}}, False),  # an object
    ({"roles": True}, False),
    ({"roles": 1}, False),
    ({"roles": None}, False),
    ({"role": "Admin"}, False),
    ({"role": "admin "}, False),
    ({"role": "administrator"}, False),
    ({"role": ["admin"]}, False),
    ({"role": {"admin": True}}, False),
    ({"role": True}, False),
    ({"role": ""}, False),
    ({"admin": True}, False),  # not a claim we read
    ({"Roles": ["admin"]}, False),
    ({}, False),
]


@pytest.mark.parametrize(("claims", "admin"), ROLES)
def test_admin_role_variants(claims: dict[str, object], admin: bool) -> None:
    assert auth.is_admin(claims) is admin


@pytest.mark.parametrize(("claims", "admin"), ROLES)
def test_admin_role_variants_through_a_signed_token(claims: dict[str, object], admin: bool) -> None:
    body = {"sub": "r", "exp": int(time.time()) + 60, **claims}
    tok = jwt.encode(body, SECRET, algorithm="HS256")
    assert auth.verify_token(tok, SETTINGS).is_admin is admin


def test_minted_token_without_admin_is_not_admin() -> None:
    ident = auth.verify_token(auth.mint_token(SETTINGS, "dave", admin=False, ttl_s=60), SETTINGS)
    assert (ident.client_id, ident.is_admin) == ("dave", False)


@pytest.mark.parametrize(
    "offered",
    ["bearer", "chat.v1, bearer", "Bearer", "x, y, BEARER", "bearer,", "bearer, ,"],
)
def test_bearer_offered_last_is_401_missing_token(offered: str) -> None:
    # whatever else the request carries: the client meant to send the token here
    headers = {"Sec-WebSocket-Protocol": offered, "Authorization": f"Bearer {make_token()}"}
    with pytest.raises(HandshakeRejected) as info:
        auth.find_token(headers, {"token": make_token()}, {})
    assert (info.value.status, info.value.code) == (401, "missing_token")
    assert "bearer" in info.value.message


@pytest.mark.parametrize(
    ("offered", "token", "selected"),
    [
        ("bearer, TOKEN", "TOKEN", "bearer"),
        ("Bearer, TOKEN", "TOKEN", "Bearer"),
        ("chat.v1, bearer, TOKEN, other", "TOKEN", "bearer"),
        ("bearer, bearer", "bearer", "bearer"),  # taken as the token, which then fails to verify
        ("bearer, not-a-jwt", "not-a-jwt", "bearer"),
    ],
)
def test_bearer_pair_takes_the_value_after_it(offered: str, token: str, selected: str) -> None:
    tok = make_token()
    found = auth.find_token({"Sec-WebSocket-Protocol": offered.replace("TOKEN", tok)}, {}, {})
    assert found == auth.FoundToken(token.replace("TOKEN", tok), "subprotocol", selected)


def test_subprotocols_that_are_not_ours_are_ignored() -> None:
    assert auth.find_token({"Sec-WebSocket-Protocol": "chat.v1, mqtt"}, {}, {}) is None
    assert auth.find_token({"Sec-WebSocket-Protocol": "eyJ.only-two"}, {}, {}) is None
    assert auth.find_token({"Sec-WebSocket-Protocol": "x.y.z"}, {}, {}) is None  # not ey...
    header = {"Sec-WebSocket-Protocol": "chat.v1", "Authorization": "Bearer abc"}
    assert auth.find_token(header, {}, {}) == auth.FoundToken("abc", "header")


@pytest.mark.parametrize(
    ("authorization", "found"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER  abc ", "abc"),
        ("Bearer ", None),
        ("Bearer", None),
        ("Basic abc", None),
        ("abc", None),
        ("", None),
    ],
)
def test_authorization_header_shapes(authorization: str, found: str | None) -> None:
    result = auth.find_token({"Authorization": authorization}, {}, {})
    assert (result.token if result else None) == found


def test_token_length_limit_is_exact() -> None:
    assert rejected("a" * (auth.MAX_TOKEN_CHARS + 1)) == (401, "invalid_token")
    with pytest.raises(HandshakeRejected) as info:
        auth.verify_token("a" * auth.MAX_TOKEN_CHARS, SETTINGS)
    assert info.value.message != "the token is too long"  # at the limit: decoded, then malformed


@pytest.mark.parametrize("sub", ["", None, True, 1.5, ["a"], {"a": 1}, "x" * 257])
def test_unusable_client_ids_are_invalid_token(sub: object) -> None:
    tok = make_token(None, sub=sub) if sub is not None else make_token(None)
    assert rejected(tok) == (401, "invalid_token")


def test_client_id_at_the_length_limit_and_numeric_ids() -> None:
    assert auth.verify_token(make_token("x" * 256), SETTINGS).client_id == "x" * 256
    s = SETTINGS.replace(jwt_client_id_claim="ID")
    assert auth.verify_token(make_token(None, ID=0), s).client_id == "0"
    assert rejected(make_token(None, ID=True), s) == (401, "invalid_token")  # a bool is not an id
    assert rejected(make_token(None, ID=""), s) == (401, "invalid_token")


def _message(token: str, settings: Settings = SETTINGS) -> str:
    with pytest.raises(HandshakeRejected) as info:
        auth.verify_token(token, settings)
    return info.value.message


def test_each_invalid_token_says_why() -> None:
    # the message is what a client sees in the 401's JSON and in the refusal log line
    now = int(time.time())
    assert _message("a" * (auth.MAX_TOKEN_CHARS + 1)) == "the token is too long"
    assert _message("not.a.jwt") == "the token is malformed"
    assert _message(make_token(secret="another-secret-0123456789-0123456789")) == (
        "the token's signature does not verify"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _message(make_token(algorithm="HS512")) == "the token's algorithm is not accepted"
    assert _message(jwt.encode({"sub": "x"}, SECRET, algorithm="HS256")) == "the token has no 'exp' claim"
    s = SETTINGS.replace(jwt_issuer="https://issuer")
    assert _message(make_token(iss="https://other"), s) == "the token is not valid: Invalid issuer"
    assert _message(jwt.encode({"exp": now + 60}, SECRET, algorithm="HS256")) == "the token has no usable 'sub' claim"
    assert _message(make_token("x" * 257)) == "the client id is too long"
    assert _message(make_token("ok\udfff")) == "the client id is not valid Unicode text"
    assert _message(make_token(ttl=-60)) == "the token has expired"
    assert _message(make_token(nbf=now + 600)) == "the token is not valid yet"


def test_an_audience_in_the_token_is_ignored_unless_configured() -> None:
    assert auth.verify_token(make_token("a", aud="someone-else"), SETTINGS).client_id == "a"


def test_identity_carries_the_claims_and_expiry() -> None:
    tok = make_token("c", ttl=120, team="blue")
    ident = auth.verify_token(tok, SETTINGS)
    assert ident.claims["team"] == "blue" and ident.claims["sub"] == "c"
    assert ident.expires_at == float(jwt.decode(tok, options={"verify_signature": False})["exp"])


def test_minted_claims_and_header() -> None:
    s = SETTINGS.replace(jwt_issuer="https://issuer", jwt_audience="wsapp")
    tok = auth.mint_token(s, "erin", admin=False, ttl_s=90)
    assert jwt.get_unverified_header(tok)["alg"] == "HS256"
    claims = jwt.decode(tok, options={"verify_signature": False})
    assert set(claims) == {"sub", "iat", "exp", "roles", "iss", "aud"}
    assert (claims["iss"], claims["aud"], claims["roles"]) == ("https://issuer", "wsapp", [])
    assert claims["exp"] - claims["iat"] == 90 and abs(claims["iat"] - time.time()) < 5
    default = jwt.decode(auth.mint_token(SETTINGS, "f"), options={"verify_signature": False})
    assert set(default) == {"sub", "iat", "exp", "roles"}
    assert default["roles"] == [] and default["exp"] - default["iat"] == 3600  # not admin, one hour


def test_minting_needs_an_hs256_secret() -> None:
    with pytest.raises(RuntimeError, match=r"^minting needs WSAPP_JWT_SECRET \(or demo mode's generated secret\)$"):
        auth.mint_token(Settings(), "x")
    with pytest.raises(RuntimeError, match=r"^minting makes HS256 tokens, which WSAPP_JWT_ALGORITHMS does not accept$"):
        auth.mint_token(SETTINGS.replace(jwt_algorithms=("HS384",)), "x")


def test_bearer_last_message_is_exact() -> None:
    with pytest.raises(
        HandshakeRejected, match=r"^401 missing_token: the 'bearer' subprotocol must be followed by the token$"
    ):
        auth.find_token({"Sec-WebSocket-Protocol": "bearer"}, {}, {})


def test_offered_subprotocols() -> None:
    assert auth.offered_subprotocols(None) == []
    assert auth.offered_subprotocols("") == []
    assert auth.offered_subprotocols(" a , ,b,") == ["a", "b"]


@pytest.mark.parametrize("sub", ["\ud800", "ok\udfff", "\udc80x"])
def test_a_client_id_that_is_not_valid_unicode_is_refused(sub: str) -> None:
    # valid JSON (an escaped lone surrogate) that no frame naming the client could carry
    assert rejected(make_token(sub)) == (401, "invalid_token")


def test_a_non_ascii_client_id_is_accepted() -> None:
    assert auth.verify_token(make_token("zoë-😀"), SETTINGS).client_id == "zoë-😀"


# ---- the cache of verified tokens ---------------------------------------------------------


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens PyJWT actually decoded (a fresh, empty cache for the test)."""
    auth.verified_tokens.clear()
    seen: list[str] = []
    original = auth._jwt.decode

    def counting(token: str, *args: object, **kwargs: object) -> object:
        seen.append(token)
        return original(token, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(auth._jwt, "decode", counting)
    yield seen
    auth.verified_tokens.clear()


def test_a_token_verified_once_comes_from_the_cache(decodes: list[str]) -> None:
    tok = make_token("cached")
    first = auth.verify_token(tok, SETTINGS)
    assert auth.verify_token(tok, SETTINGS) is first and decodes == [tok]


def test_a_refusal_is_never_cached(decodes: list[str]) -> None:
    tok = make_token("forged", secret="another-secret-0123456789-abcdefghijklmnop")
    assert rejected(tok) == (401, "invalid_token")
    assert rejected(tok) == (401, "invalid_token")
    assert decodes == [tok, tok] and len(auth.verified_tokens) == 0


def test_a_cached_token_is_not_accepted_by_settings_that_would_refuse_it(decodes: list[str]) -> None:
    tok = make_token("keyed", iss="https://issuer")
    auth.verify_token(tok, SETTINGS)
    other_key = Settings(jwt_secret="another-secret-0123456789-abcdefghijklmnop")
    assert rejected(tok, other_key) == (401, "invalid_token")
    assert rejected(tok, Settings(jwt_secret=SECRET, jwt_issuer="https://elsewhere"))[1] == "invalid_token"
    assert rejected(tok, Settings(jwt_secret=SECRET, jwt_algorithms=("HS512",)))[1] == "invalid_token"
    assert rejected(tok, Settings(jwt_secret=SECRET, jwt_client_id_claim="uid"))[1] == "invalid_token"
    assert auth.verify_token(tok, SETTINGS).client_id == "keyed"  # its own entry is still there
    for_us = make_token("keyed", aud="wsapp")
    auth.verify_token(for_us, Settings(jwt_secret=SECRET, jwt_audience="wsapp"))
    assert rejected(for_us, Settings(jwt_secret=SECRET, jwt_audience="other"))[1] == "invalid_token"


def test_an_expired_token_is_never_accepted_from_the_cache(decodes: list[str]) -> None:
    strict = Settings(jwt_secret=SECRET, jwt_leeway_s=0)
    exp = int(time.time()) + 2
    tok = jwt.encode({"sub": "brief", "exp": exp}, SECRET, algorithm="HS256")
    identity = auth.verify_token(tok, strict)
    assert auth.verified_tokens.get(tok, strict, exp - 0.5) is identity
    assert auth.verified_tokens.get(tok, Settings(jwt_secret=SECRET, jwt_leeway_s=10), exp + 5) is identity
    assert auth.verified_tokens.get(tok, strict, exp) is None  # PyJWT's rule: exp <= now - leeway
    assert len(auth.verified_tokens) == 0  # and the entry is gone
    auth.verify_token(tok, strict)  # stored again while still valid
    deadline = time.monotonic() + 10
    while time.time() < exp:  # the real clock, not a sleep for synchronisation
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert rejected(tok, strict) == (401, "token_expired")


def test_the_cache_is_bounded(decodes: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth.VerifiedTokens, "MAX_ENTRIES", 3)
    tokens = [make_token(f"c{i}") for i in range(4)]
    for tok in tokens:
        auth.verify_token(tok, SETTINGS)
    assert len(auth.verified_tokens) == 3
    auth.verify_token(tokens[0], SETTINGS)  # the oldest was dropped: decoded again
    auth.verify_token(tokens[3], SETTINGS)  # the newest was kept
    assert decodes == [*tokens, tokens[0]]
    long = make_token("long", pad="x" * auth.VerifiedTokens.MAX_CACHED_CHARS)
    auth.verify_token(long, SETTINGS)
    auth.verify_token(long, SETTINGS)
    assert decodes.count(long) == 2  # too long to keep
    at_bound, over = make_token("at-bound"), make_token("at-bound", pad="x")
    monkeypatch.setattr(auth.VerifiedTokens, "MAX_CACHED_CHARS", len(at_bound))
    assert len(over) > len(at_bound)
    for tok in (at_bound, at_bound, over, over):
        auth.verify_token(tok, SETTINGS)
    assert (decodes.count(at_bound), decodes.count(over)) == (1, 2)  # up to the bound is kept


def test_the_number_of_configurations_is_bounded(decodes: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth.VerifiedTokens, "MAX_CONFIGS", 1)
    tok = make_token("configs")
    auth.verify_token(tok, SETTINGS)
    other = Settings(jwt_secret=SECRET, jwt_issuer="")  # the same configuration
    auth.verify_token(tok, other)
    leeway = Settings(jwt_secret=SECRET, jwt_audience="")  # still the same
    auth.verify_token(tok, leeway)
    second = Settings(jwt_secret=SECRET + "-2")
    tok2 = make_token("configs", secret=SECRET + "-2")
    auth.verify_token(tok2, second)
    auth.verify_token(tok2, second)
    assert decodes == [tok, tok2, tok2]
