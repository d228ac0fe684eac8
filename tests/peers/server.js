#!/usr/bin/env node
// Test peer: a real Bayeux server (CometD or Faye) on 127.0.0.1, used by the
// Rust integration tests (see tests/common/peers.rs).
//
//   node server.js --kind cometd|faye [--port N] [--timeout MS] [--max-interval MS] [--ack] [--exit-on-stdin-eof]
//
// --kind     cometd: cometd-nodejs-server (long-polling), mounted at /cometd
//            faye:   faye NodeAdapter, mounted at /bayeux
// --port     port to listen on; 0 (default) picks a free one. A fixed port is
//            used to restart a server on the port it had before.
// --timeout  the server's long-poll (/meta/connect hold) timeout in ms.
//            Default: each server's own default (CometD 30000 ms, Faye 60 s).
// --max-interval
//            cometd only: how long (ms) the server keeps a session without a
//            /meta/connect after the last one ended (its maxInterval); then the
//            session expires and the client's next connect gets
//            402::session_unknown. Default: CometD's own, 10000 ms. Each expiry
//            writes "session expired: <id>" to stderr.
//
// cometd also writes "session ended: <id> <subscriptions>" to stderr when a
// session ends by /meta/disconnect; each subscription is followed by how many
// other sessions are still subscribed to it, e.g. "/x/* (0 others)".
// --ack      cometd only: install cometd-nodejs-server's acknowledged-messages
//            extension (ack-extension.js). A client that offers ext.ack:true
//            at handshake then gets ext.ack:true in the handshake reply and a
//            batch number in ext.ack of every /meta/connect reply; messages are
//            delivered only on /meta/connect replies and re-sent until the
//            client acknowledges their batch. Without --ack (the default) the
//            server has no extension and never sends ext.ack.
// --exit-on-stdin-eof
//            exit when stdin reaches EOF, so that a server started by a test
//            process that dies (and so closes the pipe) does not outlive it.
//
// When listening, exactly one line is printed to stdout:
//   {"port":12345,"path":"/cometd"}
// Nothing else is ever written to stdout; diagnostics go to stderr.
'use strict';

const http = require('http');

function usage(message) {
    process.stderr.write(`server.js: ${message}\n` +
        'usage: node server.js --kind cometd|faye [--port N] [--timeout MS] [--max-interval MS] [--ack] [--exit-on-stdin-eof]\n');
    process.exit(2);
}

function parseArgs(argv) {
    const options = { kind: null, port: 0, timeoutMs: null, maxIntervalMs: null, ack: false, exitOnStdinEof: false };
    for (let i = 0; i < argv.length; ++i) {
        const arg = argv[i];
        const value = () => {
            if (i + 1 >= argv.length) {
                usage(`missing value for ${arg}`);
            }
            return argv[++i];
        };
        const integer = (text, min, max) => {
            if (!/^[0-9]+$/.test(text)) {
                usage(`${arg} needs a non-negative integer, got ${JSON.stringify(text)}`);
            }
            const n = Number(text);
            if (n < min || n > max) {
                usage(`${arg} must be between ${min} and ${max}, got ${n}`);
            }
            return n;
        };
        switch (arg) {
            case '--kind':
                options.kind = value();
                break;
            case '--port':
                options.port = integer(value(), 0, 65535);
                break;
            case '--timeout':
                options.timeoutMs = integer(value(), 1, 3600 * 1000);
                break;
            case '--max-interval':
                options.maxIntervalMs = integer(value(), 1, 3600 * 1000);
                break;
            case '--ack':
                options.ack = true;
                break;
            case '--exit-on-stdin-eof':
                options.exitOnStdinEof = true;
                break;
            case '-h':
            case '--help':
                process.stderr.write('usage: node server.js --kind cometd|faye [--port N] [--timeout MS] [--max-interval MS] [--ack] [--exit-on-stdin-eof]\n');
                process.exit(0);
                break;
            default:
                usage(`unknown argument ${JSON.stringify(arg)}`);
        }
    }
    if (options.kind !== 'cometd' && options.kind !== 'faye') {
        usage('--kind must be cometd or faye');
    }
    if (options.maxIntervalMs !== null && options.kind !== 'cometd') {
        usage('--max-interval is supported only with --kind cometd');
    }
    if (options.ack && options.kind !== 'cometd') {
        usage('--ack is supported only with --kind cometd');
    }
    return options;
}

function notFound(response) {
    response.statusCode = 404;
    response.setHeader('Content-Type', 'text/plain');
    response.end('not found\n');
}

function createCometD(options) {
    const cometd = require('cometd-nodejs-server');
    const path = '/cometd';
    const config = {};
    if (options.timeoutMs !== null) {
        config.timeout = options.timeoutMs;
    }
    if (options.maxIntervalMs !== null) {
        config.maxInterval = options.maxIntervalMs;
    }
    // No security policy is installed: cometd-nodejs-server's default (policy
    // null) lets every remote client handshake, subscribe to and publish on
    // any channel.
    const cometdServer = cometd.createCometDServer(config);
    // A line on stderr when a session expires (no /meta/connect within maxInterval) or ends
    // otherwise (/meta/disconnect), so a test can wait for either instead of sleeping. An
    // ended session's line names its subscriptions and, for each, how many other sessions
    // are still subscribed to it: "session ended: <id> /a/* (0 others), /b (1 others)".
    cometdServer.addListener('sessionRemoved', (session, timeout) => {
        if (timeout) {
            process.stderr.write(`session expired: ${session.id}\n`);
        } else {
            const subscriptions = session.subscriptions.map(channel => {
                const others = channel.subscribers.filter(s => s.id !== session.id).length;
                return `${channel.name} (${others} others)`;
            });
            process.stderr.write(`session ended: ${session.id} ${subscriptions.join(', ')}\n`);
        }
    });
    if (options.ack) {
        const { AcknowledgedMessagesExtension } = require('cometd-nodejs-server/ack-extension');
        cometdServer.addExtension(new AcknowledgedMessagesExtension());
    }
    const httpServer = http.createServer((request, response) => {
        const pathname = request.url.split('?')[0];
        // CometD clients may append the message type to the URL
        // (e.g. /cometd/handshake, /cometd/connect).
        if (pathname === path || pathname.startsWith(path + '/')) {
            cometdServer.handle(request, response);
        } else {
            notFound(response);
        }
    });
    return { httpServer, path, close: () => cometdServer.close() };
}

function createFaye(options) {
    const faye = require('faye');
    const path = '/bayeux';
    const config = { mount: path };
    if (options.timeoutMs !== null) {
        // Faye's timeout is in seconds (fractions work: it is multiplied by
        // 1000 for the advice and for the connection timer).
        config.timeout = options.timeoutMs / 1000;
    }
    const bayeux = new faye.NodeAdapter(config);
    const httpServer = http.createServer(notFound);
    bayeux.attach(httpServer);
    return { httpServer, path, close: () => bayeux.close() };
}

function main() {
    const options = parseArgs(process.argv.slice(2));
    const peer = options.kind === 'cometd' ? createCometD(options) : createFaye(options);
    const httpServer = peer.httpServer;
    // Long polls are held for the Bayeux timeout; never let Node cut a
    // request/response cycle short.
    httpServer.requestTimeout = 0;
    httpServer.timeout = 0;

    let stopping = false;
    const stop = reason => {
        if (stopping) {
            return;
        }
        stopping = true;
        process.stderr.write(`server.js: stopping (${reason})\n`);
        try {
            peer.close();
        } catch (e) {
            process.stderr.write(`server.js: error closing Bayeux server: ${e}\n`);
        }
        httpServer.close();
        httpServer.closeAllConnections();
        process.exit(0);
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));

    httpServer.on('error', error => {
        const detail = error.code === 'EADDRINUSE' ? error.message : (error.stack || error);
        process.stderr.write(`server.js: ${options.kind} server error: ${detail}\n`);
        process.exit(error.code === 'EADDRINUSE' ? 3 : 1);
    });

    httpServer.listen({ host: '127.0.0.1', port: options.port }, () => {
        const port = httpServer.address().port;
        // Writes to a pipe or file are synchronous on Linux, so this line is
        // flushed before anything else happens.
        process.stdout.write(JSON.stringify({ port, path: peer.path }) + '\n');
        process.stderr.write(`server.js: ${options.kind} listening on http://127.0.0.1:${port}${peer.path}\n`);
        if (options.exitOnStdinEof) {
            process.stdin.on('end', () => stop('stdin closed'));
            process.stdin.on('error', () => stop('stdin error'));
            process.stdin.resume();
        }
    });
}

main();
