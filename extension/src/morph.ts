/**
 * The keyed DOM patcher: `morph(live, fresh)` changes the live DOM into a freshly rendered one in place.
 *
 * Elements with the same `data-key` (or, without keys, the same tag at the same place) are kept and only
 * their changed attributes and text are written, so scrolling, focus and the node a person is looking at
 * survive an update. Pure: the DOM only.
 */

function keyOf(node: Node): string | null {
  return node.nodeType === Node.ELEMENT_NODE
    ? (node as Element).getAttribute('data-key')
    : null;
}

function sameKind(a: Node, b: Node): boolean {
  return a.nodeType === b.nodeType && a.nodeName === b.nodeName;
}

function syncAttributes(live: Element, fresh: Element): void {
  for (const attr of Array.from(live.attributes)) {
    if (!fresh.hasAttribute(attr.name)) {
      live.removeAttribute(attr.name);
    }
  }
  for (const attr of Array.from(fresh.attributes)) {
    if (live.getAttribute(attr.name) !== attr.value) {
      live.setAttribute(attr.name, attr.value);
    }
  }
}

/**
 * Change `live` into `fresh` in place, keeping every node that can be kept.
 *
 * Children with a `data-key` match the live child with the same key (anywhere among its siblings);
 * the others match the next unmatched live child of the same tag. A kept node is moved only when
 * its place changed, so a focused button that stays where it was keeps its focus. Returns the
 * number of nodes created or removed (0: nothing but text and attributes changed).
 */
export function morph(live: Element, fresh: Element): number {
  syncAttributes(live, fresh);
  return morphChildren(live, fresh);
}

function morphChildren(live: Element, fresh: Element): number {
  let churn = 0;
  const oldChildren = Array.from(live.childNodes);
  const keyed = new Map<string, Node>();
  for (const child of oldChildren) {
    const key = keyOf(child);
    if (key !== null && !keyed.has(key)) {
      keyed.set(key, child);
    }
  }
  const used = new Set<Node>();
  let cursor = 0; // the next unkeyed live child to try
  const newChildren = Array.from(fresh.childNodes);
  newChildren.forEach((child, index) => {
    const key = keyOf(child);
    let match: Node | undefined;
    if (key !== null) {
      const candidate = keyed.get(key);
      if (candidate && sameKind(candidate, child) && !used.has(candidate)) {
        match = candidate;
      }
    } else {
      while (cursor < oldChildren.length) {
        const candidate = oldChildren[cursor++];
        if (
          !used.has(candidate) &&
          keyOf(candidate) === null &&
          sameKind(candidate, child)
        ) {
          match = candidate;
          break;
        }
      }
    }
    const here = live.childNodes[index] ?? null;
    if (match) {
      used.add(match);
      if (match.nodeType === Node.ELEMENT_NODE) {
        churn += morph(match as Element, child as Element);
      } else if (match.nodeValue !== child.nodeValue) {
        match.nodeValue = child.nodeValue;
      }
      if (here !== match) {
        live.insertBefore(match, here);
      }
    } else {
      live.insertBefore(child, here);
      churn += 1;
    }
  });
  while (live.childNodes.length > newChildren.length) {
    live.removeChild(live.lastChild as Node);
    churn += 1;
  }
  return churn;
}
