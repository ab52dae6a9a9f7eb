'use strict';
// Benchmark backends: several WebSocket servers in one Node process (one
// event loop, so they share the generator's core cheaply).  Each port answers
// GET /health with 200 and upgrades WebSocket requests:
//
//   /push  receives quotes when told to (push at a rate, or flood)
//   /echo  echoes every message back with its type
//   /idle  (or any other path) nothing
//
// Controlled by JSON lines on stdin, reports JSON lines on stdout:
//   {"cmd":"push","rate":20,"tickMs":5}  every /push connection gets `rate`
//                                         quotes/s, spread evenly over time
//   {"cmd":"flood"}                       every /push connection gets quotes as
//                                         fast as its socket drains
//   {"cmd":"stop"}                        stop pushing
//   {"cmd":"mark"}                        reset the sent counter
//   {"cmd":"stats"}                       print {"event":"stats",...}
//
// Usage: node backend.js PORT[,PORT...]

const http = require('http');
const { WebSocketServer } = require('ws');

const ports = (process.argv[2] || '').split(',').filter(Boolean).map(Number);
if (ports.length === 0) {
  process.stderr.write('usage: node backend.js PORT[,PORT...]\n');
  process.exit(2);
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// Quote bodies: a fixed set, so building a message costs one concatenation.
// Every message starts with {"t":"<16-digit microseconds>", the send time on
// the monotonic clock that process.hrtime reads (shared by every process on
// the machine), at a fixed offset the generator reads without parsing JSON.
const SYMBOLS = ['AAPL', 'MSFT', 'GOOG', 'AMZN', 'NVDA', 'META', 'TSLA', 'JPM'];
const BODIES = [];
for (let i = 0; i < 64; i++) {
  const symbol = SYMBOLS[i % SYMBOLS.length];
  const price = 100 + ((i * 7919) % 40000) / 100;
  const spread = 0.01 + (i % 5) / 100;
  BODIES.push(
    ',"type":"quote","symbol":"' + symbol + '","price":' + price.toFixed(2) +
    ',"change":' + (((i % 21) - 10) / 10).toFixed(2) +
    ',"bid":' + (price - spread).toFixed(2) + ',"ask":' + (price + spread).toFixed(2) +
    ',"cur":"USD","volume":' + (1000000 + i * 12345) + ',"seq":' + String(i).padStart(8, '0') + '}'
  );
}
function quote(i) {
  const micros = (process.hrtime.bigint() / 1000n).toString().padStart(16, '0');
  return '{"t":"' + micros + '"' + BODIES[i & 63];
}
// The flood sends one constant message (t = 0: no latency is measured there).
const FLOOD_MESSAGE = Buffer.from('{"t":"' + '0'.repeat(16) + '"' + BODIES[0]);

const pushConnections = [];
let sent = 0;
let sentAll = 0;
let skipped = 0;
// A connection that already holds this much unsent data skips its quote
// (counted): when the path cannot keep up, the backends' memory stays bounded
// and the shortfall shows as delivered < offered.
const PUSH_SKIP_BYTES = 1024 * 1024;
let mode = 'idle';
let pushTimer = null;
let pushCursor = 0;
let pushDue = 0;
let pushLast = 0n;
let pushRate = 0;

function removeFrom(list, item) {
  const index = list.indexOf(item);
  if (index >= 0) list.splice(index, 1);
}

// Push at `rate` messages per second per connection: every tick, the messages
// due since the last tick (by the clock, so timer jitter does not change the
// rate) go to the next connections in turn, so each connection is visited
// `rate` times a second and the load is spread evenly over time.
function pushTick() {
  const now = process.hrtime.bigint();
  const elapsed = Number(now - pushLast) / 1e9;
  pushLast = now;
  const n = pushConnections.length;
  if (n === 0) return;
  pushDue += pushRate * n * elapsed;
  let count = Math.floor(pushDue);
  pushDue -= count;
  // Never more than one round per tick (a stalled loop does not burst).
  if (count > n) count = n;
  for (let k = 0; k < count; k++) {
    if (pushCursor >= n) pushCursor = 0;
    const ws = pushConnections[pushCursor++];
    if (ws.readyState !== 1) continue;
    if (ws.bufferedAmount > PUSH_SKIP_BYTES) {
      skipped++;
    } else {
      ws.send(quote(sentAll));
      sent++;
      sentAll++;
    }
  }
}

const FLOOD_HIGH_WATER = 64 * 1024;
const FLOOD_BATCH = 64;

// Send to one connection until its socket holds FLOOD_HIGH_WATER bytes, then
// wait for it to drain: the flood is as fast as the path takes it, and
// backpressure (a slow reader, a slow load balancer) stops it.
function pump(ws) {
  if (mode !== 'flood' || ws.readyState !== 1) return;
  const socket = ws._socket;
  let n = 0;
  socket.cork();
  while (n < FLOOD_BATCH && socket.writableLength < FLOOD_HIGH_WATER) {
    ws.send(FLOOD_MESSAGE, { binary: false });
    n++;
  }
  socket.uncork();
  sent += n;
  sentAll += n;
  if (socket.writableLength >= FLOOD_HIGH_WATER) {
    socket.once('drain', () => pump(ws));
  } else {
    setImmediate(pump, ws);
  }
}

function stop() {
  mode = 'idle';
  if (pushTimer) clearInterval(pushTimer);
  pushTimer = null;
}

function command(message) {
  switch (message.cmd) {
    case 'push':
      stop();
      mode = 'push';
      pushRate = Number(message.rate) || 20;
      pushLast = process.hrtime.bigint();
      pushDue = 0;
      pushTimer = setInterval(pushTick, Number(message.tickMs) || 5);
      break;
    case 'flood':
      stop();
      mode = 'flood';
      for (const ws of pushConnections) pump(ws);
      break;
    case 'stop':
      stop();
      break;
    case 'mark':
      sent = 0;
      skipped = 0;
      break;
    case 'stats':
      emit({
        event: 'stats',
        sent,
        skipped,
        pushConnections: pushConnections.length,
        rssKB: Math.round(process.memoryUsage().rss / 1024),
      });
      break;
    case 'exit':
      process.exit(0);
      break;
    default:
      emit({ event: 'error', message: 'unknown command ' + JSON.stringify(message) });
  }
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  input += chunk;
  let newline;
  while ((newline = input.indexOf('\n')) >= 0) {
    const line = input.slice(0, newline).trim();
    input = input.slice(newline + 1);
    if (line) command(JSON.parse(line));
  }
});
// The harness going away ends the backends too.
process.stdin.on('end', () => process.exit(0));

let listening = 0;
for (const port of ports) {
  const server = http.createServer((request, response) => {
    response.writeHead(request.url === '/health' ? 200 : 404, {
      'Content-Type': 'text/plain',
      'Content-Length': '2',
    });
    response.end('ok');
  });
  const wss = new WebSocketServer({
    server,
    perMessageDeflate: false,
    skipUTF8Validation: true,
    clientTracking: false,
    maxPayload: 16 * 1024 * 1024,
  });
  wss.on('connection', (ws, request) => {
    const path = request.url.split('?')[0];
    ws._socket.setNoDelay(true);
    ws.on('error', () => {});
    if (path === '/push') {
      pushConnections.push(ws);
      ws.on('close', () => removeFrom(pushConnections, ws));
      if (mode === 'flood') pump(ws);
    } else if (path === '/echo') {
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    }
  });
  server.listen({ port, host: '127.0.0.1', backlog: 1024 }, () => {
    listening++;
    if (listening === ports.length) emit({ event: 'ready', ports, pid: process.pid });
  });
  server.on('error', (error) => {
    emit({ event: 'error', message: String(error) });
    process.exit(1);
  });
}
