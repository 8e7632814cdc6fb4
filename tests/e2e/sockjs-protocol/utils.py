"""Python 3 port of the HTTP/WebSocket helpers of sockjs-protocol's utils.py (same names
and behaviour as upstream's py2 module, which needs httplib_fork and ws4py). Neulbi's own
code; the vendored suite imports it unchanged."""
import http.client
import re
import socket
import urllib.parse

import websocket as _websocket


def _s(b):
    return b.decode('utf-8') if isinstance(b, (bytes, bytearray)) else b


class HttpResponse:
    """Only used by old_POST_async: a request whose response may never be read."""

    def __init__(self, method, url, headers={}, body=None, load=True):
        u = urllib.parse.urlparse(url)
        # Upstream waits 1 s; a loaded CI machine needs more (only failures wait this long).
        self.conn = http.client.HTTPConnection(u.netloc, timeout=5.0)
        path = u.path + ('?' + u.query if u.query else '')
        headers = dict(headers)
        if not body and method == 'POST':
            headers['Content-Length'] = '0'
        self.conn.request(method, path, body=body, headers=headers)
        if load:
            self.res = self.conn.getresponse()
            self.headers = {k.lower(): v for k, v in self.res.getheaders()}

    def __getitem__(self, key):
        return self.headers.get(key.lower())

    @property
    def status(self):
        return self.res.status

    def read(self):
        data = self.res.read1(10240)
        if data:
            return _s(data)
        self.close()
        return None

    def close(self):
        if self.conn:
            # Abort the socket (as a browser tab closing would).
            if self.conn.sock:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
            self.conn.close()
            self.conn = None


def old_POST_async(url, **kwargs):
    return HttpResponse('POST', url, **kwargs)


class WebSocket8Client(object):
    class ConnectionClosedException(Exception):
        pass

    def __init__(self, url):
        self.ws = _websocket.create_connection(url, timeout=5.0)

    def close(self):
        if self.ws:
            self.ws.close()
            self.ws = None

    def send(self, data):
        self.ws.send(data)

    def recv(self):
        try:
            opcode, frame = self.ws.recv_data_frame(True)
            if opcode == _websocket.ABNF.OPCODE_CLOSE:
                ce = self.ConnectionClosedException()
                data = frame.data
                ce.code = int.from_bytes(data[:2], 'big') if len(data) >= 2 else 1005
                ce.reason = _s(data[2:])
                raise ce
            return _s(frame.data)
        except Exception:
            self.close()
            raise


def recvline(s):
    b = []
    while True:
        c = s.recv(1)
        if not c:
            break
        b.append(c)
        if c == b'\n':
            break
    return _s(b''.join(b))


class CaseInsensitiveDict(dict):
    def __init__(self, *args, **kwargs):
        super().__init__()
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def __setitem__(self, key, value):
        super().__setitem__(key.lower(), (key, value))

    def __getitem__(self, key):
        return super().__getitem__(key.lower())[1]

    def get(self, key, default=None):
        v = super().get(key.lower())
        return default if v is None else v[1]

    def __contains__(self, key):
        return super().__contains__(key.lower())

    def items(self):
        return [v for v in super().values()]


class Response(object):
    def __repr__(self):
        return '<Response HTTP/%s %s %r %r>' % (
            self.http, self.status, self.description, self.headers)

    def __getitem__(self, key):
        return self.headers.get(key)

    def get(self, key, default):
        return self.headers.get(key, default)


class RawHttpConnection(object):
    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        # Upstream waits 1 s; a loaded CI machine needs more (only failures wait this long).
        self.s = socket.create_connection((u.hostname, u.port), timeout=5)

    def request(self, method, url, headers={}, body=None, timeout=1, http="1.1"):
        headers = CaseInsensitiveDict(headers)
        if method == 'POST':
            body = (body or '').encode('utf-8')
        elif isinstance(body, str):
            body = body.encode('utf-8')
        u = urllib.parse.urlparse(url)
        headers['Host'] = u.hostname + ':' + str(u.port) if u.port else u.hostname
        if body is not None:
            headers['Content-Length'] = str(len(body))
        rel_url = url[url.find(u.path):]
        req = ["%s %s HTTP/%s" % (method, rel_url, http)]
        for k, v in headers.items():
            req.append("%s: %s" % (k, v))
        req.append('')
        req.append('')
        self.send('\r\n'.join(req))
        if body:
            self.send(body)
        head = recvline(self.s)
        r = re.match(r'HTTP/(?P<version>\S+) (?P<status>\S+) (?P<description>.*)', head)
        resp = Response()
        resp.http = r.group('version')
        resp.status = int(r.group('status'))
        resp.description = r.group('description').rstrip('\r\n')
        resp.headers = CaseInsensitiveDict()
        while True:
            header = recvline(self.s)
            if header in ['\n', '\r\n', '']:
                break
            k, _, v = header.partition(':')
            resp.headers[k] = v.lstrip().rstrip('\r\n')
        return resp

    def read(self, size=None):
        if size is None:
            return _s(self.s.recv(999999))
        data = []
        while size > 0:
            c = self.s.recv(size)
            if not c:
                raise Exception('Socket closed!')
            size -= len(c)
            data.append(c)
        return _s(b''.join(data))

    def read_till_eof(self):
        data = []
        while True:
            c = self.s.recv(999999)
            if not c:
                break
            data.append(c)
        return _s(b''.join(data))

    def closed(self):
        t = self.s.gettimeout()
        self.s.settimeout(0.1)
        r = self.s.recv(1) == b''
        if not r:
            raise Exception('Socket not closed!')
        self.s.settimeout(t)
        return r

    def read_chunk(self):
        line = recvline(self.s).rstrip('\r\n')
        if not line:
            return ''
        size = int(line, 16) + 2  # Additional \r\n
        return self.read(size)[:-2]

    def send(self, data):
        if isinstance(data, str):
            data = data.encode('utf-8')
        self.s.sendall(data)

    def close(self):
        self.s.close()


def SynchronousHttpRequest(method, url, **kwargs):
    c = RawHttpConnection(url)
    r = c.request(method, url, **kwargs)
    if r.get('Transfer-Encoding', '').lower() == 'chunked':
        chunks = []
        while True:
            chunk = c.read_chunk()
            if len(chunk) == 0:
                break
            chunks.append(chunk)
        r.body = ''.join(chunks)
    elif r.get('Content-Length', ''):
        cl = int(r['Content-Length'])
        r.body = c.read(cl)
    elif 'close' in [k.strip() for k in r.get('Connection', '').lower().split(',')]:
        r.body = c.read_till_eof()
    else:
        if r.status in [101, 304, 204] or (r.status == 200 and method == 'OPTIONS'):
            r.body = ''
        else:
            raise Exception(str(r.status) + ' ' + str(r.headers) +
                            " No Transfer-Encoding:chunked nor Content-Length nor Connection:Close!")
    c.close()
    return r


def GET(url, **kwargs):
    return SynchronousHttpRequest('GET', url, **kwargs)


def POST(url, **kwargs):
    return SynchronousHttpRequest('POST', url, **kwargs)


def OPTIONS(url, **kwargs):
    return SynchronousHttpRequest('OPTIONS', url, **kwargs)


def AsynchronousHttpRequest(method, url, **kwargs):
    c = RawHttpConnection(url)
    r = c.request(method, url, **kwargs)
    if r.get('Transfer-Encoding', '').lower() == 'chunked':
        r.read = c.read_chunk
    elif r.get('Content-Length', ''):
        cl = int(r['Content-Length'])
        r.read = lambda: c.read(cl)
    elif ('close' in [k.strip() for k in r.get('Connection', '').lower().split(',')]
          or r.status == 101):
        r.read = lambda: c.read()
    else:
        raise Exception(str(r.status) + ' ' + str(r.headers) +
                        " No Transfer-Encoding:chunked nor Content-Length nor Connection:Close!")
    r.close = c.close
    return r


def GET_async(url, **kwargs):
    return AsynchronousHttpRequest('GET', url, **kwargs)


def POST_async(url, **kwargs):
    return AsynchronousHttpRequest('POST', url, **kwargs)
