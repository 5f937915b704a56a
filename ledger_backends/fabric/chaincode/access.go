package main

// Roles after Table 1 of the design seed (an HPC resource-sharing consortium on Fabric):
//
//	provider  read and write transactions        (an institution that runs workflows)
//	user      read and write transactions        (a researcher recording their runs)
//	admin     read-only transactions, registers new clients; never writes records
//
// An identity's role is, in order: the `lineage.role` attribute its certificate carries
// (the attribute extension Fabric CA writes when a registrar enrols a client), then a role an
// admin of the same MSP registered for it on the ledger (RegisterClient), then `admin` for
// certificates the MSP classifies as admins (NodeOU "admin"). Anything else is refused with
// an error that starts with "ACCESS DENIED", which the Python client turns into AccessDenied.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/hyperledger/fabric-contract-api-go/v2/contractapi"
)

const (
	roleAdmin    = "admin"
	roleProvider = "provider"
	roleUser     = "user"
	roleAttr     = "lineage.role"
)

type caller struct {
	MSPID string
	ID    string // the certificate subject and issuer, as Fabric's cid package spells them
	Role  string
}

func registryKey(mspID, clientID string) string {
	sum := sha256.Sum256([]byte(clientID))
	return "acl/" + mspID + "/" + hex.EncodeToString(sum[:])
}

func identify(ctx contractapi.TransactionContextInterface) (caller, error) {
	cid := ctx.GetClientIdentity()
	mspID, err := cid.GetMSPID()
	if err != nil {
		return caller{}, fmt.Errorf("ACCESS DENIED: cannot read the caller's MSP: %w", err)
	}
	id, err := cid.GetID()
	if err != nil {
		return caller{}, fmt.Errorf("ACCESS DENIED: cannot read the caller's identity: %w", err)
	}
	who := caller{MSPID: mspID, ID: id}
	if value, found, err := cid.GetAttributeValue(roleAttr); err == nil && found {
		who.Role = value
		return who, nil
	}
	registered, err := ctx.GetStub().GetState(registryKey(mspID, id))
	if err != nil {
		return caller{}, fmt.Errorf("reading the client registry: %w", err)
	}
	if registered != nil {
		who.Role = string(registered)
		return who, nil
	}
	if cert, err := cid.GetX509Certificate(); err == nil && cert != nil {
		for _, ou := range cert.Subject.OrganizationalUnit {
			if ou == "admin" {
				who.Role = roleAdmin
				return who, nil
			}
		}
	}
	return who, nil
}

func (c caller) describe() string {
	role := c.Role
	if role == "" {
		role = "no lineage role"
	}
	return fmt.Sprintf("%s identity (%s)", c.MSPID, role)
}

// mayRead: every role of Table 1 reads.
func mayRead(ctx contractapi.TransactionContextInterface) (caller, error) {
	who, err := identify(ctx)
	if err != nil {
		return who, err
	}
	switch who.Role {
	case roleAdmin, roleProvider, roleUser:
		return who, nil
	}
	return who, fmt.Errorf("ACCESS DENIED: %s may not read the ledger; ask an admin to register it", who.describe())
}

// readablePrefix: the state-key prefix of the ledger, once the caller may read it.
func readablePrefix(ctx contractapi.TransactionContextInterface, ledger string) (string, error) {
	if _, err := mayRead(ctx); err != nil {
		return "", err
	}
	return prefix(ledger)
}

// mayWrite: providers and users write records; an admin's transactions are read-only.
func mayWrite(ctx contractapi.TransactionContextInterface) (caller, error) {
	who, err := identify(ctx)
	if err != nil {
		return who, err
	}
	switch who.Role {
	case roleProvider, roleUser:
		return who, nil
	case roleAdmin:
		return who, fmt.Errorf("ACCESS DENIED: %s may read and register clients but not write records", who.describe())
	}
	return who, fmt.Errorf("ACCESS DENIED: %s may not write records; ask an admin to register it", who.describe())
}
