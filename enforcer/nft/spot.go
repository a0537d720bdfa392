package nft

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// spotSamples is how many ranges of each admitted set one check probes.
const spotSamples = 16

// spotCheck probes an admitted set without dumping it (a dump of 100k
// ranges takes seconds): for a sample of ranges, including the first and
// the last, the range's first address must be in the set and the address
// after its end must not. It returns a description of the first mismatch,
// or "". A flushed or replaced set is caught at once; a single element
// deleted by hand only with the probability of being sampled.
func (e *Enforcer) spotCheck(set string, ranges []addrRange) (string, error) {
	if len(ranges) == 0 {
		return "", nil
	}
	nl, err := e.rawConn()
	if err != nil {
		return "", err
	}
	defer nl.Close()
	idx := []int{0, len(ranges) - 1}
	for range spotSamples - 2 {
		idx = append(idx, rand.IntN(len(ranges)))
	}
	for _, i := range idx {
		r := ranges[i]
		in, err := elementPresent(nl, set, r.from)
		if err != nil {
			return "", err
		}
		if !in {
			return fmt.Sprintf("%s lacks %s", set, r.from), nil
		}
		if after := r.to.Next(); after.IsValid() {
			in, err := elementPresent(nl, set, after)
			if err != nil {
				return "", err
			}
			if in {
				return fmt.Sprintf("%s holds %s", set, after), nil
			}
		}
	}
	return "", nil
}

// elementPresent asks the kernel whether addr lies in an interval of set
// (nft get element): one request, no dump.
func elementPresent(nl *netlink.Conn, set string, addr netip.Addr) (bool, error) {
	key, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: addr.AsSlice()}})
	if err != nil {
		return false, err
	}
	elem, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_KEY, Data: key}})
	if err != nil {
		return false, err
	}
	list, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NLA_F_NESTED | 1, Data: elem}})
	if err != nil {
		return false, err
	}
	data, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(TableName + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(set + "\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_LIST_ELEMENTS, Data: list},
	})
	if err != nil {
		return false, err
	}
	_, err = nl.Execute(netlink.Message{
		Header: netlink.Header{
			Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			// No ack: the reply is the element or an error, and an
			// extra ack datagram would be read as the next reply.
			Flags: netlink.Request,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, data...),
	})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOENT):
		return false, nil
	}
	return false, fmt.Errorf("get element %s of %s: %w", addr, set, err)
}
