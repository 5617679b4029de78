/**
 * Typed client for the server extension under /fedjax-room/: its REST routes (one-shot reads and
 * actions) and the URL of its websocket (/fedjax-room/events, the live feed).
 *
 * Every REST call goes through ServerConnection.makeRequest, which adds the token and the XSRF header,
 * so the routes can all require authentication; the websocket is authenticated by the server's login
 * cookie, or by the token when the settings say to append it.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IOptionsSchema, IRoomInfo, IRun, ISnapshot, IStatus } from './types';

export * from './types';

/** The error a route answered with, message ready for a person. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

/** Call one route; `endPoint` is relative to /fedjax-room/. */
export async function requestAPI<T>(
  endPoint = '',
  init: RequestInit = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'fedjax-room', endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: any = null;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text };
    }
  }
  if (!response.ok) {
    const message =
      (data && (data.message || data.reason)) || response.statusText;
    throw new ApiError(String(message), response.status);
  }
  return data as T;
}

function post<T>(endPoint: string, body: unknown): Promise<T> {
  return requestAPI<T>(endPoint, {
    method: 'POST',
    body: JSON.stringify(body)
  });
}

/** Open the live feed (/fedjax-room/events). */
export function openEvents(): WebSocket {
  const settings = ServerConnection.makeSettings();
  let url = URLExt.join(settings.wsUrl, 'fedjax-room', 'events');
  if (settings.appendToken && settings.token) {
    url += `?token=${encodeURIComponent(settings.token)}`;
  }
  return new settings.WebSocket(url);
}

const room = (id: string): string => `rooms/${encodeURIComponent(id)}`;

export const api = {
  status: (): Promise<IStatus> => requestAPI<IStatus>('status'),
  options: (): Promise<IOptionsSchema> => requestAPI<IOptionsSchema>('options'),
  snapshot: (id: string): Promise<ISnapshot> => requestAPI<ISnapshot>(room(id)),
  connect: (url: string, key: string): Promise<IRoomInfo> =>
    post<IRoomInfo>('rooms', { url, key }),
  startDemo: (sites: number, dataset: string): Promise<IRoomInfo> =>
    post<IRoomInfo>('rooms/demo', { sites, dataset }),
  disconnect: (id: string): Promise<unknown> =>
    requestAPI(room(id), { method: 'DELETE' }),
  startRun: (id: string, options: Record<string, unknown>): Promise<IRun> =>
    post<IRun>(`${room(id)}/runs`, options),
  cancelRun: (id: string, run: string, reason: string): Promise<IRun> =>
    post<IRun>(`${room(id)}/runs/${encodeURIComponent(run)}/cancel`, {
      reason
    }),
  dashboardNotebook: (
    id: string,
    run: string | null
  ): Promise<{ path: string; created: boolean }> =>
    post(`${room(id)}/notebook`, { run })
};
