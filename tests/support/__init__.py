"""Real receivers the tests start on 127.0.0.1: an HTTP recorder and Etsy's StatsD daemon.

- ``HttpReceiver`` (tests/support/http_receiver.py): a threaded HTTP server recording every
  request, scriptable to answer 5xx/3xx/429, slowly, or by resetting the connection.
- ``StatsdDaemon`` (tests/support/statsd_daemon.py): Etsy's ``statsd`` under node with a
  generated config on free ports, reporting every packet and every flush back to Python.
- ``UdpListener`` / ``TcpListener`` (tests/support/sockets.py): raw sockets for exact bytes.
"""
