"""What the admin views and config echoes mask: credentials by their key or header name,
and nothing an operator needs to read."""
from gwserver.redact import MASK, redact


def test_vendor_credential_headers_are_masked_and_plain_settings_are_not():
    conf = {"request": {"set": {"X-Auth-Key": "cf_global", "Ocp-Apim-Subscription-Key": "apim",
                                "X-Functions-Key": "fn", "X-Api-Key": "k", "X-Signature": "s",
                                "Authorization": "Bearer t", "X-Tier": "gold",
                                "X-Keyboard": "us", "AccessKey": "ak",
                                "X-Goog-Iap-Jwt-Assertion": "eyJ", "Client-Assertion": "eyJ",
                                "X-Jwt": "eyJ"}},
            "key": "consumer", "hash_key": "header:X-User", "key_prefix": "gw"}
    shown = redact(conf)
    masked = {name for name, value in shown["request"]["set"].items() if value == MASK}
    assert masked == {"X-Auth-Key", "Ocp-Apim-Subscription-Key", "X-Functions-Key",
                      "X-Api-Key", "X-Signature", "Authorization", "AccessKey",
                      "X-Goog-Iap-Jwt-Assertion", "Client-Assertion", "X-Jwt"}
    assert (shown["key"], shown["hash_key"], shown["key_prefix"]) == \
        ("consumer", "header:X-User", "gw")


def test_the_operations_guide_names_every_masked_name():
    """docs/operations.md lists the names masked; it must say what SECRET_HEADER and
    SECRET_KEYS do, not an older list."""
    import pathlib
    import re
    from gwserver.redact import SECRET_HEADER, SECRET_KEYS
    doc = (pathlib.Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    paragraph = doc[doc.index("The views, `check` and the log show no secret"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    listed = set(re.findall(r"`([^`]+)`", paragraph))
    spelt = {alt.replace("[-_]?", "-" if alt.startswith("api") else "").replace("$", "")
             for alt in SECRET_HEADER.pattern.split("|")}
    assert spelt - {"-key"} <= listed and "-key" in listed, spelt - listed
    assert SECRET_KEYS <= listed, SECRET_KEYS - listed
