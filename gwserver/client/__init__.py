"""The client side: HTTP/1.1 and HTTP/2 connections from clients, server TLS and session-ticket
keys.
"""
