package broker

import (
	"strings"
	"sync"

	"github.com/zpipes/zp/internal/curve"
)

// grants says which subscriptions each authenticated key may hold on the
// XPUB. A ZeroMQ topic is no secret: subscriptions match by prefix, so a
// SUB that subscribes to "" (or "j/") would receive every job's output.
// The XPUB's transport therefore asks grants about every subscription a
// connection sends, with the key that connection authenticated:
//
//   - a key may subscribe to a topic it was granted over the ROUTER
//     (FOLLOW of a job it owns grants that job's topic), or to anything
//     more specific ("j/<secret>1" under "j/<secret>");
//   - anyone authenticated may subscribe beneath a public prefix ("p/",
//     what publishers send through the XSUB), but not to less than it;
//   - everything else is refused.
//
// Under NULL (--insecure) every peer has the same empty key: there is no
// authentication to bind grants to.
type grants struct {
	public []string

	mu    sync.Mutex
	byKey map[string]map[string]struct{} // key -> granted topics
	byTop map[string]map[string]struct{} // topic -> keys it was granted to
	lens  map[int]int                    // topic length -> topics of that length
}

func newGrants(public ...string) *grants {
	return &grants{public: public, byKey: map[string]map[string]struct{}{}, byTop: map[string]map[string]struct{}{}, lens: map[int]int{}}
}

// grant lets key subscribe to topic (and anything more specific).
func (g *grants) grant(key []byte, topic string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := string(key)
	if g.byKey[k] == nil {
		g.byKey[k] = map[string]struct{}{}
	}
	g.byKey[k][topic] = struct{}{}
	if g.byTop[topic] == nil {
		g.byTop[topic] = map[string]struct{}{}
		g.lens[len(topic)]++
	}
	g.byTop[topic][k] = struct{}{}
}

// revoke withdraws topic from every key (its job is gone). Subscriptions
// admitted earlier stay, but nothing is published on the topic any more.
func (g *grants) revoke(topic string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k := range g.byTop[topic] {
		delete(g.byKey[k], topic)
		if len(g.byKey[k]) == 0 {
			delete(g.byKey, k)
		}
	}
	if _, ok := g.byTop[topic]; ok {
		delete(g.byTop, topic)
		if g.lens[len(topic)]--; g.lens[len(topic)] == 0 {
			delete(g.lens, len(topic))
		}
	}
}

// permits reports whether key may subscribe to sub.
func (g *grants) permits(key []byte, sub []byte) bool {
	s := string(sub)
	for _, p := range g.public {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	mine := g.byKey[string(key)]
	for n := range g.lens { // a handful of lengths: job topics have one
		if n <= len(s) {
			if _, ok := mine[s[:n]]; ok {
				return true
			}
		}
	}
	return false
}

// keyFingerprint names a peer's key in logs ("none" under NULL).
func keyFingerprint(raw []byte) string {
	var k curve.PublicKey
	if len(raw) != len(k) {
		return "none"
	}
	copy(k[:], raw)
	return k.Fingerprint()
}
