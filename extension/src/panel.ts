/**
 * The "Clean Room" sidebar: connected rooms, their sites, runs with live round progress and DP-noised
 * metrics, each site's epsilon against its cap, refusals and the latest audit records.
 *
 * What it shows is pushed: the panel keeps one websocket to the server extension (/fedjax-room/events),
 * applies each message to its model (state.ts) and redraws only the rooms a message changed, patching the
 * DOM in place (morph.ts), so scrolling and focus survive an update. The only thing polled is
 * the connection itself: a `Poll` (@lumino/polling) reconnects with backoff when the socket drops (and
 * reads the REST snapshot meanwhile), and stands by while the page is hidden.
 */
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { api, openEvents } from './api';
import { morph } from './morph';
import { actionButton, el, renderBody, renderRoom } from './render';
import {
  anyActive,
  applyMessage,
  applySnapshot,
  emptyState,
  IChange,
  IRoomState,
  IState
} from './state';
import { ServerMessage } from './types';

export interface IPanelActions {
  connect(): void;
  startDemo(): void;
  startRun(room: string): void;
  openDashboard(room: string, run: string | null): void;
  cancelRun(room: string, run: string): void;
  disconnect(room: string): void;
}

export interface IConnectionSettings {
  /** ms before the first reconnect attempt (and the poll's tick while connected: a no-op) */
  reconnectInterval: number;
  /** ms the reconnect backoff grows to at most */
  maxReconnectInterval: number;
}

export class CleanRoomPanel extends Widget {
  constructor(
    private readonly actions: IPanelActions,
    settings: IConnectionSettings
  ) {
    super();
    this.id = 'fedjax-room-sidebar';
    this.title.caption = 'Clean Room';
    this.addClass('fjr-panel');
    this._body = renderBody(this._state);
    this.node.append(this._header(), this._body);
    this.node.addEventListener('click', this._onClick);
    this._poll = this._makePoll(settings);
  }

  /** The rooms as last pushed. */
  get rooms(): IRoomState[] {
    return this._state.rooms;
  }

  /** Whether any room has a run pending or running. */
  get active(): boolean {
    return anyActive(this._state);
  }

  /** Whether the live feed is open. */
  get live(): boolean {
    return this._ws !== null && this._ws.readyState === WebSocket.OPEN;
  }

  setSettings(settings: IConnectionSettings): void {
    const old = this._poll;
    this._poll = this._makePoll(settings);
    old.dispose();
  }

  /** Connect now if the feed is down; otherwise the server pushes every change by itself. */
  async refresh(): Promise<void> {
    if (!this.live) {
      await this._poll.refresh();
    }
  }

  /** Show (or, with null, clear) a long action in progress at the top of the panel, with a spinner. */
  setBusy(text: string | null): void {
    this._state.busy = text;
    this._render({ rooms: true, changed: new Set() });
  }

  /** Run `action` with `text` shown as in progress meanwhile. */
  async busyWhile<T>(text: string, action: () => Promise<T>): Promise<T> {
    this.setBusy(text);
    try {
      return await action();
    } finally {
      this.setBusy(null);
    }
  }

  /** Ask the server to follow `run` (its rounds, refusals and error), e.g. an old run from elsewhere. */
  follow(room: string, run: string): void {
    this._send({ type: 'subscribe', room, run });
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    this._closeSocket();
    super.dispose();
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  private _makePoll(settings: IConnectionSettings): Poll {
    const poll = new Poll({
      name: 'fedjax-room:events',
      factory: () => this._ensureConnected(),
      frequency: {
        interval: Math.max(250, settings.reconnectInterval),
        backoff: true,
        max: Math.max(settings.reconnectInterval, settings.maxReconnectInterval)
      },
      standby: 'when-hidden'
    });
    return poll;
  }

  /** The poll's tick: nothing while the feed is open; else open it (a rejection backs the poll off). */
  private async _ensureConnected(): Promise<void> {
    if (this.isDisposed || this._ws !== null) {
      return;
    }
    try {
      await this._open();
    } catch (error) {
      await this._readOnce();
      throw error;
    }
  }

  private _open(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const ws = openEvents();
      this._ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        this._state.error = null;
        this._resubscribe();
        resolve();
      };
      ws.onmessage = event => this._onMessage(event.data);
      ws.onclose = event => {
        if (this._ws === ws) {
          this._ws = null;
        }
        if (this.isDisposed) {
          return;
        }
        this._state.error = opened
          ? `the live feed closed (${event.code}${event.reason ? `: ${event.reason}` : ''}); reconnecting…`
          : 'cannot open the live feed; retrying…';
        this._render({ rooms: true, changed: new Set() });
        if (opened) {
          void this._poll.refresh();
        } else {
          reject(new Error(this._state.error));
        }
      };
    });
  }

  /** A one-shot REST read while the feed is down, so the panel shows the rooms' last state. */
  private async _readOnce(): Promise<void> {
    try {
      const status = await api.status();
      applyMessage(this._state, {
        type: 'rooms',
        rooms: status.rooms,
        active: status.active
      });
      for (const room of status.rooms) {
        applySnapshot(this._state, await api.snapshot(room.id));
      }
      this._render({ rooms: true, changed: new Set() });
    } catch (error) {
      this._state.error =
        error instanceof Error ? error.message : String(error);
      this._render({ rooms: true, changed: new Set() });
    }
  }

  private _closeSocket(): void {
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onclose = null;
      ws.close();
    }
  }

  private _send(message: Record<string, unknown>): void {
    if (message.type === 'subscribe') {
      this._followed.add(`${message.room}\u0000${message.run}`);
    }
    if (this.live) {
      this._ws?.send(JSON.stringify(message));
    }
  }

  private _resubscribe(): void {
    for (const key of this._followed) {
      const [room, run] = key.split('\u0000');
      this._ws?.send(JSON.stringify({ type: 'subscribe', room, run }));
    }
  }

  private _onMessage(data: unknown): void {
    let message: ServerMessage;
    try {
      message = JSON.parse(String(data)) as ServerMessage;
    } catch {
      return;
    }
    const change = applyMessage(this._state, message);
    this._render(change);
  }

  /** Redraw what `change` names: the whole body if the room list changed, else only those rooms. */
  private _render(change: IChange): void {
    if (change.rooms) {
      morph(this._body, renderBody(this._state));
      return;
    }
    for (const id of change.changed) {
      const room = this._state.rooms.find(r => r.info.id === id);
      const live = Array.from(this._body.children).find(
        node => node.getAttribute('data-key') === id
      );
      if (room && live) {
        morph(live, renderRoom(room));
      } else {
        morph(this._body, renderBody(this._state));
        return;
      }
    }
  }

  private _header(): HTMLElement {
    return el(
      'div',
      { class: 'fjr-header' },
      el('span', { class: 'fjr-title' }, 'Clean Room'),
      el(
        'span',
        { class: 'fjr-toolbar' },
        actionButton('Connect', 'Connect to a room', 'connect'),
        actionButton('Demo', 'Start an embedded demo room', 'start-demo'),
        actionButton('↻', 'Reconnect the live feed', 'refresh')
      )
    );
  }

  private readonly _onClick = (event: MouseEvent): void => {
    const target = (event.target as Element | null)?.closest('[data-action]');
    if (!target || !this.node.contains(target)) {
      return;
    }
    const room = target.getAttribute('data-room') ?? '';
    const run = target.getAttribute('data-run') ?? '';
    switch (target.getAttribute('data-action')) {
      case 'connect':
        return this.actions.connect();
      case 'start-demo':
        return this.actions.startDemo();
      case 'refresh':
        this._closeSocket();
        void this.refresh();
        return;
      case 'start-run':
        return this.actions.startRun(room);
      case 'open-dashboard':
        return this.actions.openDashboard(room, run || null);
      case 'disconnect':
        return this.actions.disconnect(room);
      case 'cancel-run':
        return this.actions.cancelRun(room, run);
      case 'follow-run':
        return this.follow(room, run);
      case 'copy-attach':
        return this._copy(target, target.getAttribute('data-text') ?? '');
    }
  };

  private _copy(button: Element, text: string): void {
    const done = (label: string) => {
      button.textContent = label;
      window.setTimeout(() => {
        button.textContent = 'Copy';
      }, 1500);
    };
    const clipboard = navigator.clipboard;
    if (!clipboard) {
      done('Select it');
      return;
    }
    clipboard.writeText(text).then(
      () => done('Copied'),
      () => done('Select it')
    );
  }

  private readonly _body: HTMLElement;
  private readonly _state: IState = emptyState();
  private readonly _followed = new Set<string>();
  private _poll: Poll;
  private _ws: WebSocket | null = null;
}
