// The Key Vault holding hubpilot's secrets. RBAC authorization (no access policies), soft delete
// and purge protection. The app reads the secrets through Key Vault references resolved with its
// user-assigned identity, which gets "Key Vault Secrets User" on this vault only. Every access
// (log category AuditEvent) is logged to the Log Analytics workspace (table AZKVAuditLogs).

@description('Name of the Key Vault (3-24 letters, digits and hyphens).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Principal (object) id of the managed identity the app runs as.')
param principalId string

@description('Resource id of the Log Analytics workspace that receives the vault\'s audit log.')
param workspaceId string

@description('Value of the secret hub-token (hub.token). Empty: write nothing, keep the value the vault holds (a redeploy need not repeat secrets).')
@secure()
param hubToken string = ''

@description('Value of the secret graph-client-state (directory.entra.client_state). Empty: keep the value the vault holds.')
@secure()
param graphClientState string = ''

@description('Value of the secret ldap-bind-password (directory.ldap.bind_password). Empty: keep the value the vault holds.')
@secure()
param ldapBindPassword string = ''

@description('When a secret written by this deployment expires (informational in Key Vault: the app still reads it, but the vault raises SecretNearExpiry / SecretExpired events to rotate on). Default: one year from the deployment.')
param secretsExpireAt string = dateTimeAdd(utcNow(), 'P1Y')

@description('Days a deleted vault or secret can be recovered.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

// Built-in role definition id. Key Vault Secrets User: read secret values (Key Vault references).
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource hubTokenSecret 'Microsoft.KeyVault/vaults/secrets@2024-11-01' = if (!empty(hubToken)) {
  parent: vault
  name: 'hub-token'
  properties: {
    value: hubToken
    contentType: 'text/plain'
    attributes: {
      exp: dateTimeToEpoch(secretsExpireAt)
    }
  }
}

resource graphClientStateSecret 'Microsoft.KeyVault/vaults/secrets@2024-11-01' = if (!empty(graphClientState)) {
  parent: vault
  name: 'graph-client-state'
  properties: {
    value: graphClientState
    contentType: 'text/plain'
    attributes: {
      exp: dateTimeToEpoch(secretsExpireAt)
    }
  }
}

resource ldapBindPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2024-11-01' = if (!empty(ldapBindPassword)) {
  parent: vault
  name: 'ldap-bind-password'
  properties: {
    value: ldapBindPassword
    contentType: 'text/plain'
    attributes: {
      exp: dateTimeToEpoch(secretsExpireAt)
    }
  }
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, keyVaultSecretsUserRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Who read or changed which secret, and when: Key Vault keeps no such record itself.
resource auditLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'hubpilot-audit'
  scope: vault
  properties: {
    workspaceId: workspaceId
    // the resource-specific table AZKVAuditLogs rather than AzureDiagnostics
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}

output name string = vault.name
output id string = vault.id
// Ends with '/': append 'secrets/<name>' for a Key Vault reference (latest version, so a rotated
// secret reaches the app without a redeploy).
output uri string = vault.properties.vaultUri
