// Types for wsapp.js (docs/protocol.md is the reference for every frame).
export interface Position { offset: number; epoch: string }
export interface Status { status: "idle" | "connecting" | "open" | "reconnecting" | "closed" | "refused"; attempt: number; code?: number; reason?: string; delay?: number; error?: string; clientId?: string; connId?: string }
export interface Frame { type: string; id?: number; [field: string]: unknown }
export interface Resumed { recovered: boolean; replayed: number; gaps: string[]; frame: Frame }
export interface Gap { stream: string; recovered: false }
export interface Options {
  getToken?: () => string | null | Promise<string | null>;
  rooms?: Iterable<string>;
  onStatus?: (status: Status) => void;
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
  on(event: "status", fn: (s: Status) => void): () => void;
  on(event: "resumed", fn: (r: Resumed) => void): () => void;
  on(event: "gap", fn: (g: Gap) => void): () => void;
  on(event: string, fn: (frame: Frame) => void): () => void;
  off(event: string, fn: (...args: never[]) => void): void;
  connect(): void;
  close(code?: number, reason?: string): void;
  request(frame: Frame): Promise<Frame>;
  join(room: string): Promise<Frame>;
  leave(room: string): Promise<Frame>;
  send(data: unknown): Promise<Frame>;
  direct(to: string, data: unknown): Promise<Frame>;
  room(room: string, data: unknown): Promise<Frame>;
  refresh(): Promise<Frame | null>;
}
