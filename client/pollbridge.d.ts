// Type declarations for pollbridge.js (the gateway serves it as {prefix}/client.js).

export type Transport = 'websocket' | 'longpoll' | 'sse';
export type TransportOption = 'auto' | Transport;
export type FallbackReason = 'ws_error' | 'ws_timeout' | 'ws_closed_before_open' | 'ws_blocked';

/** One message, as every transport delivers it. */
export interface Envelope<T = unknown> {
  channel: string;
  id: number;
  data: T;
}

export interface ConnectOptions {
  /** Channels to subscribe from the start (handlers can be added with subscribe()). */
  channels?: string | string[];
  /** Default 'auto': WebSocket, falling back to long-poll if it cannot open. */
  transport?: TransportOption;
  /** Sent as `?token=` on every request URL. */
  token?: string;
  /** Resume points: `{channel: lastIdSeen}`. Channels without one start from now. */
  since?: Record<string, number>;
  /** Reconnect delay: full jitter over min(cap, base * 2^attempt) ms. Default {base: 250, cap: 10000}. */
  backoff?: {base?: number; cap?: number};
  /** ms a WebSocket may take to open before it counts as failed. Default 5000. */
  connectTimeout?: number;
  /** Seconds the server holds a long-poll. Default 25. */
  pollTimeout?: number;
  /** ms close() waits for the WebSocket closing handshake. Default 1000. */
  closeTimeout?: number;
  /**
   * Ask for deltas on `state` channels: later values travel as JSON Patches
   * against the previous one and handlers still get whole values. A delta
   * whose base is not the value held is dropped and a whole value asked for
   * (an `error` event with code `delta_base_mismatch`). Default false.
   */
  deltas?: boolean;
  // Injected dependencies (tests); default to the globals.
  WebSocket?: unknown;
  fetch?: (url: string, init?: unknown) => Promise<unknown>;
  EventSource?: unknown;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: unknown) => void;
  random?: () => number;
}

export interface FeedEventBase {
  type: string;
  target: Feed;
  timeStamp: number;
}
export interface OpenEvent extends FeedEventBase { type: 'open'; transport: Transport }
export interface MessageEvent<T = unknown> extends FeedEventBase {
  type: 'message';
  data: T;
  envelope: Envelope<T>;
  channel: string;
  id: number;
}
export interface ErrorEvent extends FeedEventBase {
  type: 'error';
  transport: Transport;
  channel?: string;
  /** Server error code (`forbidden`, `bad_channel`, …) for WebSocket control errors. */
  code?: string;
  /** HTTP status for a failed long-poll. */
  status?: number;
  message?: string;
  error?: unknown;
}
export interface CloseEvent extends FeedEventBase { type: 'close'; code: number; reason: string; wasClean: boolean }
export interface TransportEvent extends FeedEventBase {
  type: 'transport';
  transport: Transport;
  previous: Transport;
  reason: FallbackReason;
}
export interface ReconnectingEvent extends FeedEventBase {
  type: 'reconnecting';
  transport: Transport;
  /** Long-poll and SSE reconnect per channel. */
  channel?: string;
  /** 1 for the first retry after a success. */
  attempt: number;
  /** ms until the retry. */
  delay: number;
  /** WebSocket close code and reason of the connection that was lost. */
  code?: number;
  reason?: string;
}
export interface TruncatedEvent extends FeedEventBase {
  type: 'truncated';
  channel: string;
  /** The cursor the server could not resume from (`N`, or `N-E` with its epoch). */
  since?: number | string;
  last_id?: number;
  /** The new sequence's epoch, when the bus lost the channel while connected. */
  epoch?: string;
}
export interface ControlEvent extends FeedEventBase {
  type: 'control';
  /** A WebSocket control message: subscribed, unsubscribed, published, truncated or error. */
  data: {type: string; [key: string]: unknown};
}

export interface FeedEventMap {
  open: OpenEvent;
  message: MessageEvent;
  error: ErrorEvent;
  close: CloseEvent;
  transport: TransportEvent;
  reconnecting: ReconnectingEvent;
  truncated: TruncatedEvent;
  control: ControlEvent;
}

export type Handler<T = unknown> = (data: T, envelope: Envelope<T>) => void;

export interface Feed {
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;
  readonly readyState: 0 | 1 | 2 | 3;
  /** The transport in use now. */
  readonly transport: Transport;
  /** A frozen copy of the last id delivered per channel. */
  readonly lastIds: Readonly<Record<string, number>>;

  onopen: ((e: OpenEvent) => void) | null;
  onmessage: ((e: MessageEvent) => void) | null;
  onerror: ((e: ErrorEvent) => void) | null;
  onclose: ((e: CloseEvent) => void) | null;

  subscribe<T = unknown>(channel: string, handler?: Handler<T>): this;
  /** Without a handler the channel is dropped; with one, only that handler. */
  unsubscribe(channel: string, handler?: Handler<any>): this;
  /** WebSocket only. Resolves with the message id, rejects with the server's error message (err.code set). */
  publish(channel: string, data: unknown): Promise<number>;
  /** Raw JSON command over the WebSocket; queued until it is open. */
  send(command: object | string): void;
  close(): void;

  addEventListener<K extends keyof FeedEventMap>(type: K, listener: (e: FeedEventMap[K]) => void): void;
  removeEventListener<K extends keyof FeedEventMap>(type: K, listener: (e: FeedEventMap[K]) => void): void;
}

export const CONNECTING: 0;
export const OPEN: 1;
export const CLOSING: 2;
export const CLOSED: 3;

export function connect(baseUrl: string, options?: ConnectOptions): Feed;
/** `retry=MS` from a close reason such as "restarting; retry=2500", or null. */
export function parseRetryHint(reason: string | null | undefined): number | null;
/** Applies JSON Patch (RFC 6902) add/remove/replace operations; throws when one does not fit. */
export function applyJsonPatch(doc: unknown, ops: unknown[]): unknown;

declare const pollbridge: {
  connect: typeof connect;
  applyJsonPatch: typeof applyJsonPatch;
  CONNECTING: 0;
  OPEN: 1;
  CLOSING: 2;
  CLOSED: 3;
};
export default pollbridge;
