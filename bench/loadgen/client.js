'use strict';
// Benchmark load generator: many WebSocket clients in one Node process.
//
// Usage: node client.js --mode push|flood|echo|storm --urls URL[,URL...]
//                       --clients N [--concurrency C] [--message-size BYTES]
//                       [--source-addresses S]
//
// Client i connects to URLs[i % URLs.length], from the source address
// 127.0.0.(1 + i % S) for --source-addresses S (default 16), so no single
// address holds more than a few hundred connections (a load balancer may
// limit connections per client address).  Controlled by JSON lines on
// stdin, reports JSON lines on stdout:
//   {"cmd":"connect"}  open every client, at most C handshakes in flight;
//                      prints {"event":"connected",...} with handshakes/s
//   {"cmd":"start"}    echo: every client starts its round trips
//   {"cmd":"mark"}     start a measuring window (resets every counter)
//   {"cmd":"report"}   prints {"event":"report",...} for the window so far
//   {"cmd":"stop"}     echo: no further round trips
//   {"cmd":"close"}    drop every connection and exit
//
// push:  count messages and their latency (the backend's send stamp to now)
// flood: count messages only
// echo:  send, wait for the echo, send again; count round trips and their time
// storm: only the connect phase matters

const WebSocket = require('ws');

function parseArguments(argv) {
  const options = {
    mode: 'push',
    urls: '',
    clients: 1,
    concurrency: 200,
    messageSize: 150,
    sourceAddresses: 16,
  };
  for (let i = 2; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    options[name] = argv[i + 1];
  }
  options.urls = options.urls.split(',').filter(Boolean);
  options.clients = Number(options.clients);
  options.concurrency = Number(options.concurrency);
  options.messageSize = Number(options.messageSize);
  options.sourceAddresses = Math.max(1, Math.min(254, Number(options.sourceAddresses)));
  return options;
}

const options = parseArguments(process.argv);
const CONNECT_OPTIONS = {
  perMessageDeflate: false,
  skipUTF8Validation: true,
  handshakeTimeout: 15000,
  maxPayload: 16 * 1024 * 1024,
};

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function nowMicros() {
  return Number(process.hrtime.bigint() / 1000n);
}

// A histogram of microsecond values in buckets 1 % wide: constant memory and
// cost however many samples, percentiles within 1 %.
class Histogram {
  constructor() {
    this.counts = new Float64Array(2400);
    this.total = 0;
    this.max = 0;
  }
  record(micros) {
    if (micros < 0) micros = 0;
    const index = Math.min(this.counts.length - 1, Math.floor(Math.log1p(micros) * 100));
    this.counts[index]++;
    this.total++;
    if (micros > this.max) this.max = micros;
  }
  percentileMs(p) {
    if (this.total === 0) return null;
    const rank = Math.ceil((p / 100) * this.total);
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i];
      if (seen >= rank) return Math.min(this.max, Math.expm1((i + 0.5) / 100)) / 1000;
    }
    return this.max / 1000;
  }
  summary() {
    return {
      samples: this.total,
      p50Ms: this.percentileMs(50),
      p90Ms: this.percentileMs(90),
      p99Ms: this.percentileMs(99),
      maxMs: this.total ? this.max / 1000 : null,
    };
  }
}

const clients = [];
let closing = false;
let running = false;
let windowStart = process.hrtime.bigint();
let messages = 0;
let bytes = 0;
let dropped = 0;
let latency = new Histogram();
const ECHO_MESSAGE = Buffer.from(
  ('{"t":"' + '0'.repeat(16) + '","type":"ping","pad":"').padEnd(options.messageSize - 2, 'x') + '"}'
);

function onPushMessage(data) {
  messages++;
  bytes += data.length;
  if (data.length >= 22 && data[2] === 0x74 && data[5] === 0x22) {
    const sentAt = Number(data.toString('latin1', 6, 22));
    if (sentAt > 0) latency.record(nowMicros() - sentAt);
  }
}

function onFloodMessage(data) {
  messages++;
  bytes += data.length;
}

function sendEcho(client) {
  client.sentAt = nowMicros();
  client.ws.send(ECHO_MESSAGE, { binary: false });
}

function onEchoMessage(client, data) {
  messages++;
  bytes += data.length;
  latency.record(nowMicros() - client.sentAt);
  if (running && !closing) sendEcho(client);
}

function connectAll() {
  const total = options.clients;
  const handshakes = new Histogram();
  const errorSamples = {};
  let next = 0;
  let inFlight = 0;
  let opened = 0;
  let failed = 0;
  const started = process.hrtime.bigint();

  function finish() {
    const elapsedS = Number(process.hrtime.bigint() - started) / 1e9;
    emit({
      event: 'connected',
      open: opened,
      errors: failed,
      errorSamples,
      elapsedS,
      handshakesPerS: opened / elapsedS,
      handshake: handshakes.summary(),
    });
  }

  function openOne(i) {
    const url = options.urls[i % options.urls.length];
    const begun = nowMicros();
    const localAddress = '127.0.0.' + (1 + (i % options.sourceAddresses));
    const ws = new WebSocket(url, { ...CONNECT_OPTIONS, localAddress });
    const client = { ws, sentAt: 0 };
    let settled = false;
    function settle(ok, reason) {
      if (settled) return;
      settled = true;
      inFlight--;
      if (ok) {
        opened++;
        handshakes.record(nowMicros() - begun);
        clients.push(client);
      } else {
        failed++;
        errorSamples[reason] = (errorSamples[reason] || 0) + 1;
      }
      if (opened + failed === total) finish();
      else launch();
    }
    ws.on('open', () => settle(true));
    ws.on('error', (error) => settle(false, String(error.message || error).slice(0, 80)));
    ws.on('close', () => {
      if (!settled) settle(false, 'closed before open');
      else if (!closing && clients.includes(client)) dropped++;
    });
    if (options.mode === 'push') ws.on('message', onPushMessage);
    else if (options.mode === 'flood') ws.on('message', onFloodMessage);
    else if (options.mode === 'echo') ws.on('message', (data) => onEchoMessage(client, data));
  }

  function launch() {
    while (inFlight < options.concurrency && next < total) {
      inFlight++;
      openOne(next++);
    }
  }

  if (total === 0) finish();
  else launch();
}

function report() {
  const elapsedS = Number(process.hrtime.bigint() - windowStart) / 1e9;
  emit({
    event: 'report',
    elapsedS,
    messages,
    bytes,
    perS: messages / elapsedS,
    latency: latency.summary(),
    open: clients.filter((c) => c.ws.readyState === WebSocket.OPEN).length,
    dropped,
  });
}

function command(message) {
  switch (message.cmd) {
    case 'connect':
      connectAll();
      break;
    case 'start':
      running = true;
      if (options.mode === 'echo') for (const client of clients) sendEcho(client);
      break;
    case 'mark':
      windowStart = process.hrtime.bigint();
      messages = 0;
      bytes = 0;
      latency = new Histogram();
      break;
    case 'report':
      report();
      break;
    case 'stop':
      running = false;
      break;
    case 'close':
      closing = true;
      for (const client of clients) client.ws.terminate();
      emit({ event: 'closed' });
      setImmediate(() => process.exit(0));
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
process.stdin.on('end', () => process.exit(0));
emit({ event: 'ready', pid: process.pid });
