// A minimal MQTT 3.1.1 / 5 client (QoS 0 and 1, no TLS, no reconnect) for the bench's own load
// generator and counter. mqtt.js costs 15-20 µs of CPU per message on this kind of machine,
// more than the bridge itself; on 2 cores every microsecond the harness spends is taken from
// the servers and the bridge under test. This client parses a whole socket read at once,
// acknowledges all QoS 1 messages of a read in one write, and batches publishes into one
// write, so that it stays cheap. The Node.js baseline bridge (bridge.js) uses mqtt.js, as a
// straightforward Node.js bridge would.
//
// With version 5 the client announces a Receive Maximum of 65535, so that the broker's
// default of 20 unacknowledged QoS 1 messages per 3.1.1 client does not throttle a counter.

import net from 'node:net';

const CONNECT = 1;
const CONNACK = 2;
const PUBLISH = 3;
const PUBACK = 4;
const SUBSCRIBE = 8;
const SUBACK = 9;
const DISCONNECT = 14;

function remainingLength(n) {
    const bytes = [];
    do {
        let b = n % 128;
        n = Math.floor(n / 128);
        if (n > 0) {
            b |= 0x80;
        }
        bytes.push(b);
    } while (n > 0);
    return Buffer.from(bytes);
}

function packet(type, flags, body) {
    return Buffer.concat([Buffer.from([(type << 4) | flags]), remainingLength(body.length), body]);
}

function str(s) {
    const b = Buffer.from(s, 'utf8');
    const out = Buffer.alloc(2 + b.length);
    out.writeUInt16BE(b.length, 0);
    b.copy(out, 2);
    return out;
}

function u16(n) {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(n, 0);
    return b;
}

/** The offset after the MQTT 5 properties (a variable-length size, then that many bytes) at `at`. */
function skipProperties(buf, at) {
    let length = 0;
    let multiplier = 1;
    for (;;) {
        const b = buf[at++];
        length += (b & 0x7f) * multiplier;
        multiplier *= 128;
        if ((b & 0x80) === 0) {
            return at + length;
        }
    }
}

/** One connection to a broker. */
export class MqttLite {
    /**
     * Connects (clean session, keep-alive off); resolves once the broker accepted.
     * `onMessage(topic, payload, qos)` is called for each incoming PUBLISH.
     */
    static connect({ host = '127.0.0.1', port, clientId, version = 4, onMessage = () => {} }) {
        return new Promise((resolve, reject) => {
            const client = new MqttLite();
            client.version = version;
            client.onMessage = onMessage;
            client.socket = net.connect({ host, port, noDelay: true });
            client.socket.on('error', e => {
                if (client.onConnack) {
                    client.onConnack = null;
                    reject(e);
                } else if (client.onError) {
                    client.onError(e);
                }
            });
            client.socket.on('data', chunk => client.#read(chunk));
            client.onConnack = code => {
                client.onConnack = null;
                if (code === 0) {
                    resolve(client);
                } else {
                    reject(new Error(`CONNACK return code ${code}`));
                }
            };
            const body = Buffer.concat([
                str('MQTT'), Buffer.from([version, 0x02]), u16(0),
                // MQTT 5 properties: Receive Maximum 65535.
                ...(version === 5 ? [Buffer.from([3, 0x21, 0xff, 0xff])] : []),
                str(clientId),
            ]);
            client.socket.write(packet(CONNECT, 0, body));
        });
    }

    constructor() {
        this.buffer = Buffer.alloc(0);
        this.nextId = 0;
        this.acks = new Map(); // packet id → callback (QoS 1 publishes and SUBSCRIBE)
        this.onError = null;
    }

    #id() {
        this.nextId = (this.nextId % 65535) + 1;
        return this.nextId;
    }

    #read(chunk) {
        let buf = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
        let offset = 0;
        const pubacks = [];
        for (;;) {
            if (buf.length - offset < 2) {
                break;
            }
            let length = 0;
            let multiplier = 1;
            let i = offset + 1;
            let complete = false;
            for (; i < buf.length && i < offset + 5; ++i) {
                length += (buf[i] & 0x7f) * multiplier;
                multiplier *= 128;
                if ((buf[i] & 0x80) === 0) {
                    complete = true;
                    break;
                }
            }
            if (!complete || buf.length < i + 1 + length) {
                break;
            }
            const header = buf[offset];
            const start = i + 1;
            const end = start + length;
            this.#handle(header >> 4, header & 0x0f, buf, start, end, pubacks);
            offset = end;
        }
        this.buffer = offset < buf.length ? buf.subarray(offset) : Buffer.alloc(0);
        if (pubacks.length) {
            this.socket.write(Buffer.concat(pubacks));
        }
    }

    #handle(type, flags, buf, start, end, pubacks) {
        switch (type) {
            case CONNACK:
                if (this.onConnack) {
                    this.onConnack(buf[start + 1]);
                }
                break;
            case PUBLISH: {
                const qos = (flags >> 1) & 3;
                const topicLength = buf.readUInt16BE(start);
                const topic = buf.toString('utf8', start + 2, start + 2 + topicLength);
                let at = start + 2 + topicLength;
                if (qos > 0) {
                    pubacks.push(Buffer.from([PUBACK << 4, 2, buf[at], buf[at + 1]]));
                    at += 2;
                }
                if (this.version === 5) {
                    at = skipProperties(buf, at);
                }
                this.onMessage(topic, buf.subarray(at, end), qos);
                break;
            }
            case PUBACK:
            case SUBACK: {
                const id = buf.readUInt16BE(start);
                const done = this.acks.get(id);
                if (done) {
                    this.acks.delete(id);
                    const codes = this.version === 5 ? skipProperties(buf, start + 2) : start + 2;
                    done(type === SUBACK ? buf[codes] : 0);
                }
                break;
            }
            default:
                break;
        }
    }

    /** Subscribes to one filter; resolves with the granted QoS (0x80 = refused). */
    subscribe(filter, qos) {
        return new Promise(resolve => {
            const id = this.#id();
            this.acks.set(id, resolve);
            const properties = this.version === 5 ? [Buffer.from([0])] : [];
            this.socket.write(packet(SUBSCRIBE, 2, Buffer.concat([u16(id), ...properties, str(filter), Buffer.from([qos])])));
        });
    }

    /**
     * Encodes a PUBLISH; for QoS 1, `onAck` runs on its PUBACK. Returns the bytes: the caller
     * writes several at once (see `write`).
     */
    publishPacket(topic, payload, qos, onAck) {
        const parts = [str(topic)];
        if (qos > 0) {
            const id = this.#id();
            this.acks.set(id, onAck);
            parts.push(u16(id));
        }
        if (this.version === 5) {
            parts.push(Buffer.from([0]));
        }
        parts.push(Buffer.isBuffer(payload) ? payload : Buffer.from(payload, 'utf8'));
        return packet(PUBLISH, qos << 1, Buffer.concat(parts));
    }

    /** Writes bytes; resolves when the socket can take more. */
    write(bytes) {
        return new Promise(resolve => {
            if (this.socket.write(bytes)) {
                resolve();
            } else {
                this.socket.once('drain', resolve);
            }
        });
    }

    /** Sends DISCONNECT and closes. */
    end() {
        return new Promise(resolve => {
            this.socket.end(packet(DISCONNECT, 0, Buffer.alloc(0)), resolve);
        });
    }
}
