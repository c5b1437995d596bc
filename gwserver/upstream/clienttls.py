"""ssl contexts for talking TLS to an upstream, from its ``tls`` settings, shared by the
health prober and the HTTP/2 upstream client (the HTTP/1.1 pools hand the same settings to
urllib3: proxy.tls_options). None verifies with the system store."""
import ssl

_CONTEXTS = {}


def client_context(tls, alpn=()):
    """One context per distinct (settings, ALPN offer): building one reads the CA files."""
    key = (tls, tuple(alpn))
    context = _CONTEXTS.get(key)
    if context is None:
        verify, ca_file, _, cert_file, key_file = tls or (True, None, None, None, None)
        context = ssl.create_default_context(cafile=ca_file)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if cert_file:
            context.load_cert_chain(cert_file, key_file)
        if alpn:
            context.set_alpn_protocols(list(alpn))
        _CONTEXTS[key] = context
    return context
