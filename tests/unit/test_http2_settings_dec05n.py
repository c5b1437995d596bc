"""What the settings say one HTTP/2 connection may hold (attack pass dec05n, item 3): the
text of connection_window_size said it bounded what a connection makes the worker hold,
while each stream buffers a body of its own (up to request_buffer_size) and costs ~30 KiB;
request_buffer_size's warning counted one body per connection."""
from gwserver.settings import HTTP2, conf_warnings, parse_conf


def test_connection_window_size_is_not_said_to_bound_a_connections_memory():
    doc = HTTP2.fields["connection_window_size"].doc
    assert "the most a client connection makes the worker hold" not in doc
    assert "request_buffer_size" in doc and "max_concurrent_streams" in doc


def test_the_buffer_warning_counts_a_body_per_http2_stream():
    conf = parse_conf({"server": {"request_buffer_size": 128 << 20, "bind": ["127.0.0.1:8080"]},
                       "http2": {"h2c": True, "listeners": {
                           "127.0.0.1:8080": {"max_concurrent_streams": 500}}}})
    warning = next(w for w in conf_warnings(conf) if "request_buffer_size" in w)
    assert "each HTTP/2 connection up to 500 times that" in warning, warning
    plain = parse_conf({"server": {"request_buffer_size": 128 << 20}})
    warning = next(w for w in conf_warnings(plain) if "request_buffer_size" in w)
    assert "HTTP/2" not in warning
