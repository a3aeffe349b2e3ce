// Reading the status of AKS long-running operations. AKS answers a pool PUT or deleteMachines with
// status URLs at subscription level (/subscriptions/<id>/providers/Microsoft.ContainerService/
// locations/<region>/operations/<id>), outside the cluster's resource group, so roles on the
// cluster do not cover them. Without this role hubpilot still works: it reports such an operation
// as pending and the next run re-observes the pool; with it, a run reports the operation's end.

targetScope = 'subscription'

@description('Principal (object) id of the managed identity the app runs as.')
param principalId string

// Read-only: the status and result of operations of Microsoft.ContainerService in any region.
var operationStatusActions = [
  'Microsoft.ContainerService/locations/operations/read'
  'Microsoft.ContainerService/locations/operationresults/read'
]

resource statusRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, 'hubpilot-aks-operation-status')
  properties: {
    roleName: 'hubpilot AKS operation status reader ${take(uniqueString(subscription().id), 6)}'
    description: 'hubpilot scale: read the status of AKS long-running operations (pool resize, delete machines).'
    type: 'CustomRole'
    permissions: [
      {
        actions: operationStatusActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: [
      subscription().id
    ]
  }
}

resource statusAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, 'hubpilot-aks-operation-status')
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', statusRole.name)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    statusRole
  ]
}

output roleDefinitionId string = statusRole.id
