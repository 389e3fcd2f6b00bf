// Types for wsapp.js (docs/protocol.md is the reference for every frame).
export interface Position { offset: number; epoch: string }
export interface Status { status: "idle" | "connecting" | "open" | "reconnecting" | "closed" | "refused"; attempt: number; code?: number; reason?: string; delay?: number; opened?: boolean; error?: "token_expired" | "bad_token"; clientId?: string; connId?: string; resuming?: boolean }
/** What `onRefusal` is told of a connection that closed before it opened. */
export interface Refusal { code: number; reason: string; token: string | null; attempt: number }
export interface Frame { type: string; id?: number; [field: string]: unknown }
export interface Resumed { recovered: boolean; replayed: number; gaps: string[]; frame: Frame }
export interface Gap { stream: string; recovered: false }
export interface Options {
  getToken?: (context: { purpose: "connect" | "refresh" }) => string | null | Promise<string | null>;
  rooms?: Iterable<string>;
  onStatus?: (status: Status) => void;
  /** A close before the open (a browser is not shown why): false (or a Promise of it) stops retrying. */
  onRefusal?: (refusal: Refusal) => boolean | void | Promise<boolean | void>;
  /** A route that is not chat: no chat frames; every message is a `data` event, as received. */
  raw?: boolean;
  /** Offer ["bearer", token] instead of [token] (an opaque token, not a JWT, must). */
  bearer?: boolean;
  /** false: no retry after any close (settable later: `client.reconnect`). */
  reconnect?: boolean;
  ackTimeoutMs?: number;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  stableMs?: number;
  refreshAheadMs?: number;
  autoConnect?: boolean;
  WebSocket?: typeof WebSocket;
}
export declare function decodeJwt(token: string): Record<string, unknown> | null;
export declare class WsappError extends Error { code: string; frame: Frame | null }
export declare class WsappClient {
  constructor(url: string, options?: Options);
  readonly status: Status["status"];
  readonly clientId: string | null;
  readonly connId: string | null;
  readonly rooms: Set<string>;
  readonly members: Map<string, Set<string>>;
  readonly positions: Map<string, Position>;
  reconnect: boolean;
  on(event: "status", fn: (s: Status) => void): () => void;
  on(event: "resumed", fn: (r: Resumed) => void): () => void;
  on(event: "gap", fn: (g: Gap) => void): () => void;
  on(event: "data", fn: (data: string | Blob | ArrayBuffer) => void): () => void;
  on(event: "refreshed", fn: (r: { token: string }) => void): () => void;
  on(event: string, fn: (frame: Frame) => void): () => void;
  off(event: string, fn: (...args: never[]) => void): void;
  connect(): void;
  close(code?: number, reason?: string): void;
  request(frame: Frame): Promise<Frame>;
  sendRaw(data: string | ArrayBufferLike | Blob | ArrayBufferView): boolean;
  join(room: string): Promise<Frame>;
  leave(room: string): Promise<Frame>;
  send(data: unknown): Promise<Frame>;
  direct(to: string, data: unknown): Promise<Frame>;
  room(room: string, data: unknown): Promise<Frame>;
  refresh(token?: string): Promise<Frame | null>;
}
