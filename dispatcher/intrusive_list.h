// Intrusive doubly linked lists: the node carries `next` and `prev` (a
// loop's connections, an HTTP/2 connection's streams). No allocation.
#pragma once

namespace tandem::dispatcher {

template <typename Node>
void LinkFront(Node*& head, Node* node) {
  node->next = head;
  node->prev = nullptr;
  if (head != nullptr) head->prev = node;
  head = node;
}

template <typename Node>
void Unlink(Node*& head, Node* node) {
  if (node->prev != nullptr) node->prev->next = node->next;
  if (node->next != nullptr) node->next->prev = node->prev;
  if (head == node) head = node->next;
  node->next = node->prev = nullptr;
}

}  // namespace tandem::dispatcher
