"""The pure core: routing, schemas, the plugin chain and balancing. No sockets, no gevent."""
