"""What the admin views and config echoes mask: credentials by their key or header name,
and nothing an operator needs to read."""
from gwserver.redact import MASK, redact


def test_vendor_credential_headers_are_masked_and_plain_settings_are_not():
    conf = {"request": {"set": {"X-Auth-Key": "cf_global", "Ocp-Apim-Subscription-Key": "apim",
                                "X-Functions-Key": "fn", "X-Api-Key": "k", "X-Signature": "s",
                                "Authorization": "Bearer t", "X-Tier": "gold",
                                "X-Keyboard": "us"}},
            "key": "consumer", "hash_key": "header:X-User", "key_prefix": "gw"}
    shown = redact(conf)
    masked = {name for name, value in shown["request"]["set"].items() if value == MASK}
    assert masked == {"X-Auth-Key", "Ocp-Apim-Subscription-Key", "X-Functions-Key",
                      "X-Api-Key", "X-Signature", "Authorization"}
    assert (shown["key"], shown["hash_key"], shown["key_prefix"]) == \
        ("consumer", "header:X-User", "gw")
