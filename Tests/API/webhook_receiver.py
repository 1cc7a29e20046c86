#!/usr/bin/env python3
"""A webhook receiver for hv serve's alert tests: listens on 127.0.0.1 (a free port, written to
PORT_FILE), appends each POSTed body as one line to OUT_FILE and answers 204.

    webhook_receiver.py PORT_FILE OUT_FILE
"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(sys.argv[2], "ab") as out:
            out.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *arguments):
        pass


server = HTTPServer(("127.0.0.1", 0), Receiver)
with open(sys.argv[1], "w") as port:
    port.write(str(server.server_address[1]))
server.serve_forever()
