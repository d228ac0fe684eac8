#!/usr/bin/env node
// Test peer: a SCRIPTED FAKE of the Salesforce Streaming API (CometD
// long-polling at /cometd/60.0 plus the OAuth 2.0 token endpoint), used by the
// Rust integration tests. It is not Salesforce and not a general Bayeux
// server: it exists because no real server offers Salesforce's behaviour
// offline (replay ids and retention, `403::Unknown client` session expiry,
// bearer-token checks, `401::Authentication invalid`, `403::Handshake denied`,
// the OAuth token endpoint). Wire formats follow
// ../shared/reference/bayeux-protocol.md section 3; everything else (error
// texts the reference does not give, event shapes, control endpoints) is this
// fake's own choice and is documented below. Plain Node, no dependencies.
//
//   node salesforce.js [--port N] [--retention N] [--session-timeout-ms MS]
//       [--poll-timeout-ms MS] [--token T]... [--refresh-token R]...
//       [--client-id ID --client-secret SECRET] [--token-ttl-ms MS]
//       [--max-sessions N] [--exit-on-stdin-eof]
//
// --port               port on 127.0.0.1; 0 (default) picks a free one.
// --retention          events kept per channel (oldest dropped first); default 10000.
// --session-timeout-ms a session with no /meta/connect outstanding for this long
//                      expires (Salesforce: 40 s); default 40000.
// --poll-timeout-ms    how long a /meta/connect is held, also sent as
//                      advice.timeout (Salesforce: 110 s); default 110000.
// --token T            a valid access token that never expires (repeatable).
// --refresh-token R    a refresh token accepted by grant_type=refresh_token (repeatable).
// --client-id/--client-secret
//                      the connected app's credentials for the OAuth grants.
// --token-ttl-ms       lifetime of tokens issued by the token endpoint; 0
//                      (default) = until revoked.
// --max-sessions       concurrent sessions allowed; a handshake beyond that gets
//                      `403::Organization concurrent user limit exceeded`,
//                      reconnect none; 0 (default) = unlimited.
// --exit-on-stdin-eof  exit when stdin reaches EOF (the test process died).
//
// When listening, exactly one line is printed to stdout:
//   {"port":12345,"path":"/cometd/60.0"}
// Nothing else is ever written to stdout; diagnostics go to stderr.
//
// ---- Bayeux endpoint: POST /cometd/60.0 (also /cometd/60.0/<anything>) ----
// - Content-Type must be application/json (else HTTP 400). Bodies over 32768
//   bytes get HTTP 413 "Maximum Request Size Exceeded" (every endpoint but
//   /_control/).
// - Every request needs `Authorization: Bearer <token>` (or `OAuth <token>`)
//   with a valid token. Otherwise /meta/handshake gets (HTTP 200)
//   `403::Handshake denied`, advice.reconnect none,
//   ext.sfdc.failureReason "401::Authentication invalid"; every other message
//   gets `401::Authentication invalid`, advice.reconnect none, and the HTTP
//   status is 401. (Without any Authorization header the reason is
//   `401::Request requires authentication`.) A session addressed with an
//   invalid token is dropped: the client must start a new one.
// - Handshake: supportedConnectionTypes must contain "long-polling" (the only
//   type offered). Reply ext {"replay":true,"payload.format":true}, advice
//   {reconnect:retry, interval:0, timeout:<poll timeout>}, and a
//   `Set-Cookie: sfdc-stream=...` that every later request must send back.
// - Unknown/expired clientId, or a missing/stale sfdc-stream cookie:
//   `403::Unknown client` with advice {reconnect:handshake, interval:0}
//   (the cookie case adds ext.sfdc.failureReason naming the cookie).
// - Connect: like CometD Java (which Salesforce runs), the first connect of
//   a session is answered at once; later ones are held until an event is
//   queued, for at most the poll timeout, or the client's advice.timeout if
//   smaller (0 = answer at once). Events are delivered ONLY in /meta/connect
//   replies, after the connect reply in the same array, oldest first. A second
//   connect while one is held ends the held one (empty, successful). Events
//   stay queued until they are written in a connect reply.
// - Subscribe: channels /event/*, /topic/*, /data/*, /u/* (no wildcards; a
//   `?filter` suffix is ignored); anything else gets `400::The channel you
//   requested to subscribe to does not exist`. ext.replay is a map channel ->
//   replayId: -1 = new events only (also the default without ext.replay),
//   -2 = every retained event, N = the retained events after N, where N must be
//   the id of a retained event, else `400::The replayId {N} you provided was
//   invalid. Please provide a valid ID, -2 to replay all events, or -1 to replay
//   only new events.` A map without the subscribed channel gets `400::The
//   replayId for channel <ch> wasn't found using the provided replay ID map
//   <map>`. A repeated subscribe to the same channel in a session replaces the
//   queued events of that channel by the new replay position's backlog.
//   Unsubscribe drops the channel's queued events. Publishing from a client
//   gets `403::Publish not allowed`.
// - Disconnect ends the session (a held connect is answered with reconnect none).
// - A session with no connect outstanding for --session-timeout-ms expires.
// - Event delivery: {"channel":"/event/Foo__e","data":{"schema":"<id>",
//   "payload":{...published payload, "seq":k},"event":{"replayId":N,
//   "EventUuid":"<uuid>"}}}. replayId increases per channel by a random 1..3
//   (non-contiguous, as on Salesforce); seq counts 1, 2, 3... per channel.
//
// ---- OAuth: POST /services/oauth2/token (application/x-www-form-urlencoded) ----
// - grant_type=client_credentials, client_id, client_secret (must match
//   --client-id/--client-secret).
// - grant_type=refresh_token, refresh_token (one of --refresh-token), client_id
//   (must match), client_secret (optional; must match when given).
// - grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer, assertion: any
//   well-formed header.payload.signature JWT whose payload `iss` is the client
//   id (and whose `exp`, if present, is in the future). THE SIGNATURE IS NOT
//   VERIFIED: this is a test fake.
// Success (200): {"access_token":"<new random>","instance_url":"http://127.0.0.1:<port>",
//   "token_type":"Bearer","id":"...","issued_at":"<ms>","signature":"...","scope":"api"}.
// Wrong client id/secret or JWT issuer: 400 {"error":"invalid_client",...};
// unknown refresh token or malformed/expired JWT: 400 {"error":"invalid_grant",...};
// other grant types: 400 {"error":"unsupported_grant_type",...}.
//
// ---- Control endpoints for tests (JSON in, JSON out, no auth) ----
// POST /_control/publish {"channel":"/event/Foo__e","count":N,"payload":{...}}
//      -> {"channel":...,"events":[{"replayId":N,"seq":k,"EventUuid":"..."}...]}
// POST /_control/revoke {"token":"..."} (one) or {} (all access tokens; refresh
//      tokens stay valid) -> {"revoked":n,"sessionsDropped":m}. Sessions last
//      used with a revoked token are dropped; a held connect on them is answered
//      at once with HTTP 401 `401::Authentication invalid`.
// POST /_control/expire-sessions -> {"expired":n}. Drops every session; a held
//      connect is answered at once with `403::Unknown client` + handshake advice.
// POST /_control/rotate-cookie -> {"cookie":"..."}. Like a load balancer's
//      routing-cookie expiry: requests with the old sfdc-stream cookie get
//      `403::Unknown client`.
// POST /_control/trim {"keep":N[,"channel":"..."]} keeps the newest N events of
//      the channel (default: of every channel) -> {"removed":n}.
// POST /_control/fail-token-requests {"count":N,"status":S} makes the next N
//      token requests fail with HTTP S (default 503) {"error":"temporarily_unavailable"}.
// GET  /_control/events?channel=/event/Foo__e -> {"events":[<delivery message>...]}
//      (the retained events, oldest first).
// GET  /_control/stats -> counters: handshakes, handshakesDenied, connects,
//      connectsUnauthorized, unknownClient, subscribes (a list: clientId,
//      subscription, replay = the request's ext.replay map or null, successful,
//      error), unsubscribes, disconnects, eventsPublished, eventsDelivered,
//      tokenRequests (per grant type), tokensIssued, tokenRequestsFailed,
//      rejectedTooLarge, sessions {active, expired, dropped, list}, channels
//      {<channel>: {retained, oldestReplayId, newestReplayId, published}}.
'use strict';

const http = require('http');
const crypto = require('crypto');

const API_VERSION_PATH = '/cometd/60.0';
const TOKEN_PATH = '/services/oauth2/token';
const CONTROL_PREFIX = '/_control/';
const MAX_BODY_BYTES = 32768;
const MAX_CONTROL_BODY_BYTES = 16 * 1024 * 1024;
const COOKIE_NAME = 'sfdc-stream';
const JWT_GRANT = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const ORG_ID = '00D000000000001AAA';
const USER_ID = '005000000000001AAA';
const USAGE = 'usage: node salesforce.js [--port N] [--retention N] [--session-timeout-ms MS] ' +
    '[--poll-timeout-ms MS] [--token T]... [--refresh-token R]... [--client-id ID] ' +
    '[--client-secret SECRET] [--token-ttl-ms MS] [--max-sessions N] [--exit-on-stdin-eof]\n';

function usage(message) {
    process.stderr.write(`salesforce.js: ${message}\n${USAGE}`);
    process.exit(2);
}

function log(message) {
    process.stderr.write(`salesforce.js: ${message}\n`);
}

function parseArgs(argv) {
    const options = {
        port: 0,
        retention: 10000,
        sessionTimeoutMs: 40000,
        pollTimeoutMs: 110000,
        tokens: [],
        refreshTokens: [],
        clientId: null,
        clientSecret: null,
        tokenTtlMs: 0,
        maxSessions: 0,
        exitOnStdinEof: false,
    };
    for (let i = 0; i < argv.length; ++i) {
        const arg = argv[i];
        const value = () => {
            if (i + 1 >= argv.length) {
                usage(`missing value for ${arg}`);
            }
            return argv[++i];
        };
        const integer = (min, max) => {
            const text = value();
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
            case '--port': options.port = integer(0, 65535); break;
            case '--retention': options.retention = integer(0, 100000000); break;
            case '--session-timeout-ms': options.sessionTimeoutMs = integer(1, 86400000); break;
            case '--poll-timeout-ms': options.pollTimeoutMs = integer(1, 86400000); break;
            case '--token': options.tokens.push(value()); break;
            case '--refresh-token': options.refreshTokens.push(value()); break;
            case '--client-id': options.clientId = value(); break;
            case '--client-secret': options.clientSecret = value(); break;
            case '--token-ttl-ms': options.tokenTtlMs = integer(0, 86400000 * 365); break;
            case '--max-sessions': options.maxSessions = integer(0, 1000000); break;
            case '--exit-on-stdin-eof': options.exitOnStdinEof = true; break;
            case '-h':
            case '--help':
                process.stderr.write(USAGE);
                process.exit(0);
                break;
            default:
                usage(`unknown argument ${JSON.stringify(arg)}`);
        }
    }
    return options;
}

const options = parseArgs(process.argv.slice(2));

// ---------------------------------------------------------------- state

const state = {
    baseUrl: null, // set once listening
    // access token -> { expiresAt: ms epoch or null, origin: string }
    tokens: new Map(),
    refreshTokens: new Set(options.refreshTokens),
    // clientId -> session
    sessions: new Map(),
    // channel -> { events: [event], lastReplayId, seq, published }
    channels: new Map(),
    cookie: randomId(16),
    tokenFailures: { count: 0, status: 503 },
    stats: {
        handshakes: 0,
        handshakesDenied: 0,
        connects: 0,
        connectsUnauthorized: 0,
        unknownClient: 0,
        subscribes: [],
        unsubscribes: 0,
        disconnects: 0,
        eventsPublished: 0,
        eventsDelivered: 0,
        tokenRequests: {},
        tokensIssued: 0,
        tokenRequestsFailed: 0,
        rejectedTooLarge: 0,
        sessionsExpired: 0,
        sessionsDropped: 0,
    },
};
for (const token of options.tokens) {
    state.tokens.set(token, { expiresAt: null, origin: '--token' });
}

function randomId(bytes) {
    return crypto.randomBytes(bytes).toString('hex');
}

function tokenValid(token) {
    const entry = state.tokens.get(token);
    if (!entry) {
        return false;
    }
    if (entry.expiresAt !== null && Date.now() >= entry.expiresAt) {
        state.tokens.delete(token);
        return false;
    }
    return true;
}

function channelState(channel) {
    let ch = state.channels.get(channel);
    if (!ch) {
        // Salesforce replay ids are large opaque numbers; start somewhere that
        // is clearly not 0 or 1.
        ch = { events: [], lastReplayId: 1000 + crypto.randomInt(1000), seq: 0, published: 0 };
        state.channels.set(channel, ch);
    }
    return ch;
}

// ---------------------------------------------------------------- sessions

function newSession(token, replayRequested) {
    const session = {
        clientId: randomId(13),
        token,
        replayRequested,
        subscriptions: new Set(),
        queue: [], // events, per channel in replayId order
        connected: false, // a first connect was answered
        held: null, // the held /meta/connect exchange, if any
        expiryTimer: null,
    };
    state.sessions.set(session.clientId, session);
    armExpiry(session);
    return session;
}

function armExpiry(session) {
    clearTimeout(session.expiryTimer);
    session.expiryTimer = setTimeout(() => {
        if (state.sessions.get(session.clientId) === session) {
            log(`session ${session.clientId} expired (no connect for ${options.sessionTimeoutMs} ms)`);
            state.stats.sessionsExpired += 1;
            removeSession(session, 'unknown');
        }
    }, options.sessionTimeoutMs);
}

function disarmExpiry(session) {
    clearTimeout(session.expiryTimer);
    session.expiryTimer = null;
}

// Removes a session; a held connect is answered with `outcome`
// ('unknown' | 'unauthorized' | 'disconnected').
function removeSession(session, outcome) {
    disarmExpiry(session);
    state.sessions.delete(session.clientId);
    if (session.held) {
        finishConnect(session.held, outcome);
    }
}

// ---------------------------------------------------------------- replies

function unknownClientReply(msg, failureReason) {
    state.stats.unknownClient += 1;
    const reply = {
        channel: msg.channel,
        successful: false,
        error: '403::Unknown client',
        advice: { reconnect: 'handshake', interval: 0 },
    };
    if (msg.clientId !== undefined) {
        reply.clientId = msg.clientId;
    }
    if (msg.id !== undefined) {
        reply.id = msg.id;
    }
    if (failureReason) {
        reply.ext = { sfdc: { failureReason } };
    }
    if (msg.channel === '/meta/subscribe' || msg.channel === '/meta/unsubscribe') {
        reply.subscription = msg.subscription;
    }
    return reply;
}

function errorReply(msg, error, extra) {
    const reply = { channel: msg.channel, successful: false, error };
    if (msg.clientId !== undefined) {
        reply.clientId = msg.clientId;
    }
    if (msg.id !== undefined) {
        reply.id = msg.id;
    }
    return Object.assign(reply, extra || {});
}

function connectAdvice() {
    return { reconnect: 'retry', interval: 0, timeout: options.pollTimeoutMs };
}

// ---------------------------------------------------------------- HTTP plumbing

function send(response, status, contentType, body, headers) {
    if (response.writableEnded || response.destroyed) {
        return;
    }
    response.statusCode = status;
    response.setHeader('Content-Type', contentType);
    response.setHeader('Cache-Control', 'no-cache, no-store');
    for (const [name, value] of Object.entries(headers || {})) {
        response.setHeader(name, value);
    }
    response.end(body);
}

function sendJson(response, status, value, headers) {
    send(response, status, 'application/json;charset=UTF-8', JSON.stringify(value), headers);
}

// Reads the whole body; over `limit` bytes the rest is drained and
// `tooLarge` is reported (so the client can still read the 413).
function readBody(request, limit, callback) {
    const chunks = [];
    let size = 0;
    let tooLarge = false;
    request.on('data', chunk => {
        size += chunk.length;
        if (size > limit) {
            tooLarge = true;
            chunks.length = 0;
        } else {
            chunks.push(chunk);
        }
    });
    request.on('end', () => callback(tooLarge, Buffer.concat(chunks).toString('utf8')));
    request.on('error', () => { /* the client went away; nothing to answer */ });
}

function parseCookies(header) {
    const cookies = {};
    for (const part of (header || '').split(';')) {
        const eq = part.indexOf('=');
        if (eq > 0) {
            cookies[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
        }
    }
    return cookies;
}

// -> { token } or { token: null, reason }
function authenticate(request) {
    const header = request.headers.authorization;
    if (!header) {
        return { token: null, reason: '401::Request requires authentication' };
    }
    const match = /^(?:Bearer|OAuth)\s+(\S+)\s*$/i.exec(header);
    if (!match || !tokenValid(match[1])) {
        return { token: null, reason: '401::Authentication invalid' };
    }
    return { token: match[1] };
}

// ---------------------------------------------------------------- Bayeux

function handleBayeux(request, response, body) {
    if (request.method !== 'POST') {
        send(response, 400, 'text/plain', 'Bayeux requests must be POSTed\n');
        return;
    }
    const contentType = (request.headers['content-type'] || '').toLowerCase();
    if (!contentType.startsWith('application/json')) {
        send(response, 400, 'text/plain', 'Content-Type must be application/json\n');
        return;
    }
    let messages;
    try {
        messages = JSON.parse(body);
    } catch (e) {
        sendJson(response, 400, [{ successful: false, error: '400::Invalid JSON' }]);
        return;
    }
    if (!Array.isArray(messages)) {
        messages = [messages];
    }
    // The handshake must be alone in its request: the rest is ignored.
    if (messages.length > 0 && messages[0] && messages[0].channel === '/meta/handshake') {
        messages = [messages[0]];
    }

    const auth = authenticate(request);
    const cookieOk = parseCookies(request.headers.cookie)[COOKIE_NAME] === state.cookie;
    const exchange = {
        response,
        replies: [],
        status: 200,
        headers: {},
        session: null, // the session of the connect, if any
        connectIndex: -1,
        pollTimer: null,
        done: false,
    };
    let connectMessage = null;

    for (const msg of messages) {
        if (!msg || typeof msg !== 'object' || typeof msg.channel !== 'string') {
            exchange.replies.push({ successful: false, error: '400::Channel name not specified' });
            continue;
        }
        if (auth.token === null) {
            if (msg.channel === '/meta/handshake') {
                state.stats.handshakesDenied += 1;
                log(`handshake denied (${auth.reason})`);
                exchange.replies.push(errorReply(msg, '403::Handshake denied', {
                    advice: { reconnect: 'none' },
                    ext: { sfdc: { failureReason: auth.reason } },
                }));
            } else {
                if (msg.channel === '/meta/connect') {
                    state.stats.connectsUnauthorized += 1;
                }
                const session = state.sessions.get(msg.clientId);
                if (session) {
                    log(`session ${session.clientId} dropped: ${auth.reason}`);
                    state.stats.sessionsDropped += 1;
                    removeSession(session, 'unauthorized');
                }
                exchange.status = 401;
                exchange.replies.push(errorReply(msg, auth.reason, { advice: { reconnect: 'none' } }));
            }
            continue;
        }

        if (msg.channel === '/meta/handshake') {
            exchange.replies.push(handshake(msg, auth.token, exchange));
            continue;
        }
        const session = state.sessions.get(msg.clientId);
        if (!session) {
            exchange.replies.push(unknownClientReply(msg));
            continue;
        }
        if (!cookieOk) {
            exchange.replies.push(unknownClientReply(msg,
                `Client ${msg.clientId} has established a session, but no ${COOKIE_NAME} cookie present`));
            continue;
        }
        session.token = auth.token;
        switch (msg.channel) {
            case '/meta/connect':
                if (connectMessage !== null) {
                    exchange.replies.push(errorReply(msg, '400::Only one /meta/connect per request'));
                } else if (msg.connectionType !== 'long-polling') {
                    exchange.replies.push(errorReply(msg, '400::Invalid connection type'));
                } else {
                    state.stats.connects += 1;
                    connectMessage = msg;
                    exchange.session = session;
                    exchange.connectMessage = msg;
                    exchange.connectIndex = exchange.replies.length;
                    exchange.replies.push(null); // filled in when the connect is answered
                }
                break;
            case '/meta/subscribe':
                exchange.replies.push(subscribe(msg, session));
                break;
            case '/meta/unsubscribe':
                exchange.replies.push(unsubscribe(msg, session));
                break;
            case '/meta/disconnect':
                state.stats.disconnects += 1;
                log(`session ${session.clientId} disconnected`);
                removeSession(session, 'disconnected');
                exchange.replies.push({
                    channel: msg.channel, clientId: msg.clientId, id: msg.id, successful: true,
                });
                break;
            default:
                if (msg.channel.startsWith('/meta/')) {
                    exchange.replies.push(errorReply(msg, `400::Unknown meta channel ${msg.channel}`));
                } else {
                    exchange.replies.push(errorReply(msg, '403::Publish not allowed'));
                }
        }
    }

    if (connectMessage === null || !state.sessions.has(exchange.session.clientId)) {
        if (connectMessage !== null) {
            // Disconnected later in the same batch.
            finishConnect(exchange, 'disconnected');
        } else {
            respond(exchange);
        }
        return;
    }
    startConnect(exchange);
}

function handshake(msg, token, exchange) {
    const types = msg.supportedConnectionTypes;
    if (!Array.isArray(types) || !types.includes('long-polling')) {
        return errorReply(msg, '400::Invalid connection type', {
            supportedConnectionTypes: ['long-polling'],
            advice: { reconnect: 'none' },
        });
    }
    if (options.maxSessions > 0 && state.sessions.size >= options.maxSessions) {
        state.stats.handshakesDenied += 1;
        log(`handshake denied: ${state.sessions.size} sessions (--max-sessions ${options.maxSessions})`);
        return errorReply(msg, '403::Organization concurrent user limit exceeded', {
            advice: { reconnect: 'none' },
        });
    }
    state.stats.handshakes += 1;
    const replayRequested = Boolean(msg.ext && msg.ext.replay === true);
    const session = newSession(token, replayRequested);
    log(`handshake: session ${session.clientId} (ext.replay ${replayRequested})`);
    exchange.headers['Set-Cookie'] = `${COOKIE_NAME}=${state.cookie}; Path=/; HttpOnly`;
    const reply = {
        channel: '/meta/handshake',
        version: '1.0',
        minimumVersion: '1.0',
        clientId: session.clientId,
        supportedConnectionTypes: ['long-polling'],
        successful: true,
        ext: { replay: true, 'payload.format': true },
        advice: connectAdvice(),
    };
    if (msg.id !== undefined) {
        reply.id = msg.id;
    }
    return reply;
}

const SUBSCRIBABLE = /^\/(event|topic|data|u)\/[^/*?]+(\/[^/*?]+)*$/;

function invalidReplayIdError(value) {
    return `400::The replayId {${JSON.stringify(value)}} you provided was invalid. ` +
        'Please provide a valid ID, -2 to replay all events, or -1 to replay only new events.';
}

function subscribe(msg, session) {
    const replayMap = msg.ext && msg.ext.replay !== undefined ? msg.ext.replay : null;
    const record = {
        clientId: session.clientId,
        subscription: msg.subscription === undefined ? null : msg.subscription,
        replay: replayMap,
        successful: false,
        error: null,
    };
    state.stats.subscribes.push(record);
    const fail = error => {
        record.error = error;
        log(`subscribe ${JSON.stringify(msg.subscription)} failed: ${error}`);
        return errorReply(msg, error, { subscription: msg.subscription });
    };
    const subscriptions = Array.isArray(msg.subscription) ? msg.subscription : [msg.subscription];
    if (subscriptions.length === 0 || subscriptions.some(s => typeof s !== 'string' || s === '')) {
        return fail('400::Channel name not specified');
    }
    if (replayMap !== null && (typeof replayMap !== 'object' || Array.isArray(replayMap))) {
        return fail('400::The replay extension must be a map of channel to replayId');
    }
    const plans = [];
    for (const subscription of subscriptions) {
        const channel = subscription.split('?')[0];
        if (!channel.startsWith('/')) {
            return fail("400::Channel subscriptions must start with a leading '/'");
        }
        if (!SUBSCRIBABLE.test(channel)) {
            return fail(`400::The channel you requested to subscribe to does not exist ${channel}`);
        }
        let from = -1;
        if (replayMap !== null) {
            if (!Object.prototype.hasOwnProperty.call(replayMap, channel)) {
                return fail(`400::The replayId for channel ${channel} wasn't found using the ` +
                    `provided replay ID map ${JSON.stringify(replayMap)}`);
            }
            from = replayMap[channel];
        }
        const events = (state.channels.get(channel) || { events: [] }).events;
        let backlog;
        if (from === -1) {
            backlog = [];
        } else if (from === -2) {
            backlog = events.slice();
        } else {
            const at = Number.isSafeInteger(from) ? events.findIndex(e => e.replayId === from) : -1;
            if (at < 0) {
                return fail(invalidReplayIdError(from));
            }
            backlog = events.slice(at + 1);
        }
        plans.push({ channel, from, backlog });
    }
    for (const { channel, from, backlog } of plans) {
        session.subscriptions.add(channel);
        session.queue = session.queue.filter(e => e.channel !== channel).concat(backlog);
        log(`session ${session.clientId} subscribed to ${channel} from ${from}: ` +
            `${backlog.length} retained event(s) queued`);
    }
    record.successful = true;
    const reply = {
        channel: '/meta/subscribe',
        clientId: session.clientId,
        subscription: msg.subscription,
        successful: true,
    };
    if (msg.id !== undefined) {
        reply.id = msg.id;
    }
    return reply;
}

function unsubscribe(msg, session) {
    state.stats.unsubscribes += 1;
    const subscriptions = Array.isArray(msg.subscription) ? msg.subscription : [msg.subscription];
    if (subscriptions.length === 0 || subscriptions.some(s => typeof s !== 'string' || s === '')) {
        return errorReply(msg, '400::Channel name not specified', { subscription: msg.subscription });
    }
    for (const subscription of subscriptions) {
        const channel = subscription.split('?')[0];
        session.subscriptions.delete(channel);
        session.queue = session.queue.filter(e => e.channel !== channel);
    }
    const reply = {
        channel: '/meta/unsubscribe',
        clientId: session.clientId,
        subscription: msg.subscription,
        successful: true,
    };
    if (msg.id !== undefined) {
        reply.id = msg.id;
    }
    return reply;
}

function startConnect(exchange) {
    const session = exchange.session;
    const msg = exchange.connectMessage;
    disarmExpiry(session);
    if (session.held) {
        // A newer connect replaces the held one.
        finishConnect(session.held, 'ok');
    }
    let timeout = options.pollTimeoutMs;
    if (msg.advice && typeof msg.advice.timeout === 'number' && msg.advice.timeout >= 0) {
        timeout = Math.min(timeout, msg.advice.timeout);
    }
    if (!session.connected || session.queue.length > 0 || timeout === 0) {
        session.connected = true;
        finishConnect(exchange, 'ok');
        return;
    }
    session.held = exchange;
    exchange.pollTimer = setTimeout(() => finishConnect(exchange, 'ok'), timeout);
    exchange.response.on('close', () => {
        // The client went away before an answer: the events stay queued.
        if (!exchange.done) {
            exchange.done = true;
            clearTimeout(exchange.pollTimer);
            if (session.held === exchange) {
                session.held = null;
                if (state.sessions.get(session.clientId) === session) {
                    armExpiry(session);
                }
            }
        }
    });
}

// Answers a connect exchange: 'ok' (with the queued events), 'unknown'
// (403::Unknown client), 'unauthorized' (HTTP 401) or 'disconnected'.
function finishConnect(exchange, outcome) {
    if (exchange.done) {
        return;
    }
    exchange.done = true;
    clearTimeout(exchange.pollTimer);
    const session = exchange.session;
    const msg = exchange.connectMessage;
    if (session.held === exchange) {
        session.held = null;
    }
    let reply;
    let events = [];
    if (outcome === 'ok') {
        reply = { channel: '/meta/connect', clientId: session.clientId, successful: true, advice: connectAdvice() };
        if (msg.id !== undefined) {
            reply.id = msg.id;
        }
        events = session.queue;
        session.queue = [];
        state.stats.eventsDelivered += events.length;
        if (state.sessions.get(session.clientId) === session) {
            armExpiry(session);
        }
    } else if (outcome === 'unknown') {
        reply = unknownClientReply(msg);
    } else if (outcome === 'unauthorized') {
        state.stats.connectsUnauthorized += 1;
        exchange.status = 401;
        reply = errorReply(msg, '401::Authentication invalid', { advice: { reconnect: 'none' } });
    } else {
        reply = { channel: '/meta/connect', clientId: session.clientId, successful: true,
            advice: { reconnect: 'none', interval: 0 } };
        if (msg.id !== undefined) {
            reply.id = msg.id;
        }
    }
    exchange.replies[exchange.connectIndex] = reply;
    for (const event of events) {
        exchange.replies.push(event.message);
    }
    respond(exchange);
}

function respond(exchange) {
    exchange.done = true;
    sendJson(exchange.response, exchange.status, exchange.replies, exchange.headers);
}

// ---------------------------------------------------------------- events

function publish(channel, count, payload) {
    const ch = channelState(channel);
    const published = [];
    for (let i = 0; i < count; ++i) {
        ch.lastReplayId += 1 + crypto.randomInt(3);
        ch.seq += 1;
        ch.published += 1;
        const uuid = crypto.randomUUID();
        const event = {
            channel,
            replayId: ch.lastReplayId,
            message: {
                channel,
                data: {
                    schema: 'fake-schema-' + channel.replace(/[^A-Za-z0-9]/g, '_'),
                    payload: Object.assign({}, payload, { seq: ch.seq }),
                    event: { replayId: ch.lastReplayId, EventUuid: uuid },
                },
            },
        };
        ch.events.push(event);
        published.push({ replayId: event.replayId, seq: ch.seq, EventUuid: uuid });
        for (const session of state.sessions.values()) {
            if (session.subscriptions.has(channel)) {
                session.queue.push(event);
            }
        }
    }
    if (ch.events.length > options.retention) {
        ch.events.splice(0, ch.events.length - options.retention);
    }
    state.stats.eventsPublished += count;
    for (const session of state.sessions.values()) {
        if (session.held && session.queue.length > 0) {
            finishConnect(session.held, 'ok');
        }
    }
    return published;
}

// ---------------------------------------------------------------- OAuth

function oauthError(response, status, error, description) {
    state.stats.tokenRequestsFailed += 1;
    log(`token request failed: ${error} (${description})`);
    sendJson(response, status, { error, error_description: description });
}

function base64UrlJson(text) {
    if (!/^[A-Za-z0-9_-]+={0,2}$/.test(text)) {
        return null;
    }
    try {
        const value = JSON.parse(Buffer.from(text, 'base64url').toString('utf8'));
        return value && typeof value === 'object' && !Array.isArray(value) ? value : null;
    } catch (e) {
        return null;
    }
}

function handleToken(request, response, body, url) {
    if (request.method !== 'POST') {
        sendJson(response, 405, { error: 'invalid_request', error_description: 'must use HTTP POST' });
        return;
    }
    const params = new URLSearchParams(body);
    for (const [name, value] of url.searchParams) {
        if (!params.has(name)) {
            params.set(name, value);
        }
    }
    const grant = params.get('grant_type') || '';
    state.stats.tokenRequests[grant] = (state.stats.tokenRequests[grant] || 0) + 1;
    if (state.tokenFailures.count > 0) {
        state.tokenFailures.count -= 1;
        oauthError(response, state.tokenFailures.status, 'temporarily_unavailable', 'injected failure');
        return;
    }
    const clientKnown = options.clientId !== null;
    switch (grant) {
        case 'client_credentials':
            if (!clientKnown || params.get('client_id') !== options.clientId ||
                params.get('client_secret') !== options.clientSecret) {
                oauthError(response, 400, 'invalid_client', 'invalid client credentials');
                return;
            }
            break;
        case 'refresh_token':
            if (!clientKnown || params.get('client_id') !== options.clientId ||
                (params.has('client_secret') && params.get('client_secret') !== options.clientSecret)) {
                oauthError(response, 400, 'invalid_client', 'invalid client credentials');
                return;
            }
            if (!state.refreshTokens.has(params.get('refresh_token'))) {
                oauthError(response, 400, 'invalid_grant', 'expired access/refresh token');
                return;
            }
            break;
        case JWT_GRANT: {
            // Any well-formed JWT from the right issuer is accepted. The
            // signature is NOT verified: this is a test fake.
            const parts = (params.get('assertion') || '').split('.');
            const header = parts.length === 3 ? base64UrlJson(parts[0]) : null;
            const claims = parts.length === 3 ? base64UrlJson(parts[1]) : null;
            if (header === null || claims === null || parts[2] === '') {
                oauthError(response, 400, 'invalid_grant', 'invalid assertion');
                return;
            }
            if (!clientKnown || claims.iss !== options.clientId) {
                oauthError(response, 400, 'invalid_client', 'invalid client identifier (iss)');
                return;
            }
            if (claims.exp !== undefined && !(typeof claims.exp === 'number' && claims.exp * 1000 > Date.now())) {
                oauthError(response, 400, 'invalid_grant', 'expired assertion (exp)');
                return;
            }
            break;
        }
        default:
            oauthError(response, 400, 'unsupported_grant_type', `grant type not supported: ${grant}`);
            return;
    }
    const token = `${ORG_ID.slice(0, 15)}!${crypto.randomBytes(30).toString('base64url')}`;
    state.tokens.set(token, {
        expiresAt: options.tokenTtlMs > 0 ? Date.now() + options.tokenTtlMs : null,
        origin: grant,
    });
    state.stats.tokensIssued += 1;
    log(`token issued (${grant})`);
    sendJson(response, 200, {
        access_token: token,
        instance_url: state.baseUrl,
        id: `${state.baseUrl}/id/${ORG_ID}/${USER_ID}`,
        token_type: 'Bearer',
        issued_at: String(Date.now()),
        signature: crypto.randomBytes(32).toString('base64'),
        scope: 'api',
    });
}

// ---------------------------------------------------------------- control

function handleControl(request, response, body, url) {
    const name = url.pathname.slice(CONTROL_PREFIX.length);
    const bad = message => sendJson(response, 400, { error: message });
    if (request.method === 'GET') {
        if (name === 'stats') {
            sendJson(response, 200, statsSnapshot());
        } else if (name === 'events') {
            const ch = state.channels.get(url.searchParams.get('channel') || '');
            sendJson(response, 200, { events: ch ? ch.events.map(e => e.message) : [] });
        } else {
            sendJson(response, 404, { error: `unknown control endpoint GET ${url.pathname}` });
        }
        return;
    }
    if (request.method !== 'POST') {
        sendJson(response, 405, { error: 'use GET or POST' });
        return;
    }
    let args = {};
    if (body.trim() !== '') {
        try {
            args = JSON.parse(body);
        } catch (e) {
            bad(`invalid JSON: ${e.message}`);
            return;
        }
        if (!args || typeof args !== 'object' || Array.isArray(args)) {
            bad('the body must be a JSON object');
            return;
        }
    }
    const count = (value, fallback, min) => {
        if (value === undefined) {
            return fallback;
        }
        return Number.isSafeInteger(value) && value >= min ? value : null;
    };
    switch (name) {
        case 'publish': {
            if (typeof args.channel !== 'string' || !args.channel.startsWith('/')) {
                bad('"channel" must be a channel name');
                return;
            }
            const n = count(args.count, 1, 0);
            if (n === null) {
                bad('"count" must be a non-negative integer');
                return;
            }
            const payload = args.payload === undefined ? {} : args.payload;
            if (!payload || typeof payload !== 'object' || Array.isArray(payload)) {
                bad('"payload" must be an object');
                return;
            }
            const events = publish(args.channel, n, payload);
            log(`published ${n} event(s) on ${args.channel}`);
            sendJson(response, 200, { channel: args.channel, events });
            return;
        }
        case 'revoke': {
            let revoked;
            if (args.token !== undefined) {
                if (typeof args.token !== 'string') {
                    bad('"token" must be a string');
                    return;
                }
                revoked = new Set(state.tokens.has(args.token) ? [args.token] : []);
                state.tokens.delete(args.token);
            } else {
                revoked = new Set(state.tokens.keys());
                state.tokens.clear();
            }
            let dropped = 0;
            for (const session of Array.from(state.sessions.values())) {
                if (revoked.has(session.token)) {
                    dropped += 1;
                    state.stats.sessionsDropped += 1;
                    removeSession(session, 'unauthorized');
                }
            }
            log(`revoked ${revoked.size} token(s), dropped ${dropped} session(s)`);
            sendJson(response, 200, { revoked: revoked.size, sessionsDropped: dropped });
            return;
        }
        case 'expire-sessions': {
            const sessions = Array.from(state.sessions.values());
            for (const session of sessions) {
                state.stats.sessionsExpired += 1;
                removeSession(session, 'unknown');
            }
            log(`expired ${sessions.length} session(s)`);
            sendJson(response, 200, { expired: sessions.length });
            return;
        }
        case 'rotate-cookie':
            state.cookie = randomId(16);
            log('rotated the sfdc-stream cookie');
            sendJson(response, 200, { cookie: state.cookie });
            return;
        case 'trim': {
            const keep = count(args.keep, null, 0);
            if (keep === null) {
                bad('"keep" must be a non-negative integer');
                return;
            }
            if (args.channel !== undefined && typeof args.channel !== 'string') {
                bad('"channel" must be a string');
                return;
            }
            let removed = 0;
            for (const [channel, ch] of state.channels) {
                if (args.channel === undefined || args.channel === channel) {
                    const drop = Math.max(0, ch.events.length - keep);
                    ch.events.splice(0, drop);
                    removed += drop;
                }
            }
            log(`trimmed ${removed} event(s), keeping the newest ${keep}`);
            sendJson(response, 200, { removed });
            return;
        }
        case 'fail-token-requests': {
            const n = count(args.count, 1, 0);
            const status = count(args.status, 503, 100);
            if (n === null || status === null || status > 599) {
                bad('"count" must be a non-negative integer and "status" an HTTP status');
                return;
            }
            state.tokenFailures = { count: n, status };
            sendJson(response, 200, state.tokenFailures);
            return;
        }
        default:
            sendJson(response, 404, { error: `unknown control endpoint POST ${url.pathname}` });
    }
}

function statsSnapshot() {
    const channels = {};
    for (const [channel, ch] of state.channels) {
        channels[channel] = {
            retained: ch.events.length,
            oldestReplayId: ch.events.length ? ch.events[0].replayId : null,
            newestReplayId: ch.events.length ? ch.events[ch.events.length - 1].replayId : null,
            published: ch.published,
        };
    }
    const s = state.stats;
    return {
        handshakes: s.handshakes,
        handshakesDenied: s.handshakesDenied,
        connects: s.connects,
        connectsUnauthorized: s.connectsUnauthorized,
        unknownClient: s.unknownClient,
        subscribes: s.subscribes,
        unsubscribes: s.unsubscribes,
        disconnects: s.disconnects,
        eventsPublished: s.eventsPublished,
        eventsDelivered: s.eventsDelivered,
        tokenRequests: s.tokenRequests,
        tokensIssued: s.tokensIssued,
        tokenRequestsFailed: s.tokenRequestsFailed,
        rejectedTooLarge: s.rejectedTooLarge,
        sessions: {
            active: state.sessions.size,
            expired: s.sessionsExpired,
            dropped: s.sessionsDropped,
            list: Array.from(state.sessions.values()).map(session => ({
                clientId: session.clientId,
                subscriptions: Array.from(session.subscriptions),
                queued: session.queue.length,
                connectHeld: session.held !== null,
                replayRequested: session.replayRequested,
            })),
        },
        channels,
    };
}

// ---------------------------------------------------------------- server

function route(request, response) {
    const url = new URL(request.url, 'http://127.0.0.1');
    const path = url.pathname;
    const isControl = path.startsWith(CONTROL_PREFIX);
    const isBayeux = path === API_VERSION_PATH || path.startsWith(API_VERSION_PATH + '/');
    const isToken = path === TOKEN_PATH;
    if (!isControl && !isBayeux && !isToken) {
        request.resume();
        send(response, 404, 'text/plain', 'not found\n');
        return;
    }
    readBody(request, isControl ? MAX_CONTROL_BODY_BYTES : MAX_BODY_BYTES, (tooLarge, body) => {
        if (tooLarge) {
            state.stats.rejectedTooLarge += 1;
            log(`rejected a request body over ${MAX_BODY_BYTES} bytes on ${path}`);
            send(response, 413, 'text/plain', 'Maximum Request Size Exceeded\n');
            return;
        }
        try {
            if (isControl) {
                handleControl(request, response, body, url);
            } else if (isToken) {
                handleToken(request, response, body, url);
            } else {
                handleBayeux(request, response, body);
            }
        } catch (e) {
            log(`internal error on ${path}: ${e.stack || e}`);
            send(response, 500, 'text/plain', 'internal error\n');
        }
    });
}

function main() {
    const httpServer = http.createServer(route);
    // Long polls are held for the poll timeout; never let Node cut a
    // request/response cycle short.
    httpServer.requestTimeout = 0;
    httpServer.timeout = 0;

    let stopping = false;
    const stop = reason => {
        if (stopping) {
            return;
        }
        stopping = true;
        log(`stopping (${reason})`);
        httpServer.close();
        httpServer.closeAllConnections();
        process.exit(0);
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));

    httpServer.on('error', error => {
        const detail = error.code === 'EADDRINUSE' ? error.message : (error.stack || error);
        log(`server error: ${detail}`);
        process.exit(error.code === 'EADDRINUSE' ? 3 : 1);
    });

    httpServer.listen({ host: '127.0.0.1', port: options.port }, () => {
        const port = httpServer.address().port;
        state.baseUrl = `http://127.0.0.1:${port}`;
        // Writes to a pipe or file are synchronous on Linux, so this line is
        // flushed before anything else happens.
        process.stdout.write(JSON.stringify({ port, path: API_VERSION_PATH }) + '\n');
        log(`Salesforce fake listening on ${state.baseUrl}${API_VERSION_PATH} ` +
            `(token endpoint ${TOKEN_PATH}, poll timeout ${options.pollTimeoutMs} ms, ` +
            `session timeout ${options.sessionTimeoutMs} ms, retention ${options.retention})`);
        if (options.exitOnStdinEof) {
            process.stdin.on('end', () => stop('stdin closed'));
            process.stdin.on('error', () => stop('stdin error'));
            process.stdin.resume();
        }
    });
}

main();
